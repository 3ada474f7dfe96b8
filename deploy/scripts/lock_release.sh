# shellcheck shell=sh
# Used by: deploy.engine.lock.HostLock.release_argv
# The deploy's last round trip: what it leaves on the host, then the lock. Run
# by HostLock.release, or by confirm_activation.sh once it confirmed.
# $1: the lock directory; $2: our holder line; $3: the text of
# lock_clear_if_held_by.sh; $4: the text of write_revision.sh, or '' when
# there is no revision to record; $5, $6, $7: its directory, JSON text and
# generation (empty without one); then the paths the deploy no longer needs
# (an unguarded switch's record of its exit status). Records the revision
# even when the lock is gone (a reboot empties /run). Prints nothing; exits 1
# when someone else holds the lock.

lock=$1 holder=$2 clear=$3 write_revision=$4
if [ -n "$write_revision" ]; then (set -- "$5" "$6" "$7" && eval "$write_revision"); fi
shift 7
if [ "$#" -gt 0 ]; then rm -rf -- "$@"; fi
set -- "$lock" "$holder"
eval "$clear"
