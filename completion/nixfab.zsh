#compdef inv invoke nixfab
# nixfab tab completion for zsh: tasks and options from Invoke, plus host
# names and tags after --host/--tag (also `--host=`), as a deploy task's first
# argument, and after a task's short flag for them (-h). Comma lists complete
# their last element.
#
#   source /path/to/nixfab/completion/nixfab.zsh     # in ~/.zshrc, after compinit
#
# Set NIXFAB_COMPLETION_PYTHON to the Python that has nixfab installed if it
# cannot be found from the command's own #! line.

_nixfab_python() {
    if [[ -n ${NIXFAB_COMPLETION_PYTHON:-} ]]; then
        print -r -- "$NIXFAB_COMPLETION_PYTHON"
        return
    fi
    local path=${commands[$1]:-} line
    if [[ -n $path && -r $path ]] && IFS= read -r line < "$path" && [[ $line == '#!'* ]]; then
        line=${line#\#!}
        line=${line%%[[:space:]]*}
        if [[ -x $line ]]; then
            print -r -- "$line"
            return
        fi
    fi
    print -r -- python3
}

_nixfab() {
    local binary=${words[1]} cur=${words[CURRENT]} python mode="" last="" i
    local -a before candidates options
    before=("${(@)words[2,CURRENT-1]}")
    if [[ $cur == --*=* ]]; then
        before+=("${cur%%=*}")
        compset -P '*='
        cur=${cur#*=}
    fi
    (( ${#before} )) && last=${before[-1]}

    if [[ $cur == -* ]]; then
        candidates=(${(f)"$("$binary" --complete -- "$binary" "${before[@]}" "$cur" 2>/dev/null)"})
        compadd -a candidates
        return
    fi

    python=$(_nixfab_python "$binary")
    case $last in
        --host) mode=hosts ;;
        --tag) mode=tags ;;
    esac
    if [[ -n $mode ]]; then
        for (( i = 1; i <= ${#before}; i++ )); do
            case ${before[i]} in
                --inventory|-i) options+=(--inventory "${before[i+1]-}") ;;
                --inventory=*) options+=(--inventory "${before[i]#--inventory=}") ;;
                --flake) options+=(--flake "${before[i+1]-}") ;;
                --flake=*) options+=(--flake "${before[i]#--flake=}") ;;
            esac
        done
        candidates=(${(f)"$("$python" -m deploy.cli.completion "$mode" "${options[@]}" "$cur" 2>/dev/null)"})
    else
        candidates=(${(f)"$("$python" -m deploy.cli.completion words --binary "$binary" --current "$cur" -- "${before[@]}" 2>/dev/null)"})
    fi
    if (( ${#candidates} )); then
        # The candidates already carry the comma list's head, so they match the word as typed.
        compadd -Q -a candidates
    else
        _files
    fi
}

compdef _nixfab inv invoke nixfab
