# shellcheck shell=sh
# Used by: deploy.record.history.revision_record_argv, deploy.engine.lock.HostLock.release_argv
# $1: the directory; $2: the JSON text; $3: the generation number. Prints nothing.
# Write to a temporary name and rename, so a concurrent reader never sees half a file.
{ [ -d "$1" ] || mkdir -p "$1"; } && printf %s "$2" > "$1/.$3.json.tmp" && mv -f "$1/.$3.json.tmp" "$1/$3.json"
