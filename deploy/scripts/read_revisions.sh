# shellcheck shell=sh
# Used by: deploy.record.history.revisions_read_argv
# Parsed by: deploy.record.history.parse_revisions
# $1: the directory. One "N<TAB>json" line per record, nothing when there are none.
for f in "$1"/*.json; do [ -f "$f" ] || continue; n=${f##*/}; printf "%s\t" "${n%.json}"; cat "$f"; printf "\n"; done
