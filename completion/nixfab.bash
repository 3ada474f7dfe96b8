# nixfab tab completion for bash: tasks and options from Invoke, plus host
# names and tags after --host/--tag, as a deploy task's first argument, and
# after a task's short flag for them (-h). Comma lists complete their last element.
#
#   source /path/to/nixfab/completion/nixfab.bash      # e.g. from ~/.bashrc
#
# Works for `inv`, `invoke` and `nixfab`. Set NIXFAB_COMPLETION_PYTHON to the
# Python that has nixfab installed if it cannot be found from the command's
# own #! line (it can for a virtualenv's inv).

# The Python interpreter that runs `binary` (its #! line), where deploy.cli.completion lives.
_nixfab_python() {
    if [[ -n ${NIXFAB_COMPLETION_PYTHON:-} ]]; then
        printf '%s\n' "$NIXFAB_COMPLETION_PYTHON"
        return
    fi
    local path line
    path=$(type -P -- "$1") || path=""
    if [[ -n $path && -r $path ]] && IFS= read -r line < "$path" && [[ $line == '#!'* ]]; then
        line=${line#'#!'}
        line=${line%%[[:space:]]*}
        if [[ -x $line ]]; then
            printf '%s\n' "$line"
            return
        fi
    fi
    printf '%s\n' python3
}

_nixfab_complete() {
    local binary=${COMP_WORDS[0]} cur=${2-${COMP_WORDS[COMP_CWORD]}}
    local -a words=()
    local i word last
    # bash splits `--host=al` into `--host` `=` `al`; glue values back onto
    # their flags, except for the word being completed, whose flag stays last.
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word=${COMP_WORDS[i]}
        if [[ $word == "=" ]]; then
            (( i == COMP_CWORD - 1 )) && continue
            (( ${#words[@]} )) && words[${#words[@]}-1]+="="
            continue
        fi
        if (( ${#words[@]} )) && [[ ${words[${#words[@]}-1]} == --*= ]]; then
            words[${#words[@]}-1]+=$word
            continue
        fi
        words+=("$word")
    done
    [[ $cur == "=" ]] && cur=""
    last=""
    (( ${#words[@]} )) && last=${words[${#words[@]}-1]}

    COMPREPLY=()
    local candidates
    if [[ $cur == -* ]]; then
        # Flags: Invoke knows them all.
        candidates=$("$binary" --complete -- "$binary" "${words[@]}" "$cur" 2>/dev/null)
        COMPREPLY=($(compgen -W "$candidates" -- "$cur"))
        return 0
    fi

    local python mode=""
    python=$(_nixfab_python "$binary")
    case $last in
        --host) mode=hosts ;;
        --tag) mode=tags ;;
    esac
    if [[ -n $mode ]]; then
        # The common case takes the quick path: no Invoke, no task loading.
        local -a options=()
        for (( i = 0; i < ${#words[@]}; i++ )); do
            case ${words[i]} in
                --inventory|-i) options+=(--inventory "${words[i+1]-}") ;;
                --inventory=*) options+=(--inventory "${words[i]#--inventory=}") ;;
                --flake) options+=(--flake "${words[i+1]-}") ;;
                --flake=*) options+=(--flake "${words[i]#--flake=}") ;;
            esac
        done
        candidates=$("$python" -m deploy.cli.completion "$mode" "${options[@]}" "$cur" 2>/dev/null)
    else
        candidates=$("$python" -m deploy.cli.completion words --binary "$binary" --current "$cur" -- "${words[@]}" 2>/dev/null)
    fi
    # One candidate per line; names never contain spaces, so plain splitting on newlines is exact.
    local line
    while IFS= read -r line; do
        [[ -n $line ]] && COMPREPLY+=("$line")
    done <<< "$candidates"
    return 0
}

# -o default: when we offer nothing (a --flake value, say), bash completes file names.
complete -F _nixfab_complete -o default inv invoke nixfab
