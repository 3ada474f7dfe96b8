# nixfab tab completion for fish: tasks and options from Invoke, plus host
# names and tags after --host/--tag (also `--host=`), as a deploy task's first
# argument, and after a task's short flag for them (-h). Comma lists complete
# their last element.
#
#   cp completion/nixfab.fish ~/.config/fish/completions/inv.fish   # and nixfab.fish for `nixfab`
#   # or: source completion/nixfab.fish in ~/.config/fish/config.fish
#
# Set NIXFAB_COMPLETION_PYTHON to the Python that has nixfab installed if it
# cannot be found from the command's own #! line.

function __nixfab_python --argument-names binary
    if set -q NIXFAB_COMPLETION_PYTHON
        echo $NIXFAB_COMPLETION_PYTHON
        return
    end
    set -l path (command -s -- $binary)
    if test -n "$path" -a -r "$path"
        read -l line < $path
        if string match -q -- '#!*' $line
            set -l interpreter (string replace -r -- '^#!\s*(\S+).*$' '$1' $line)
            if test -x "$interpreter"
                echo $interpreter
                return
            end
        end
    end
    echo python3
end

function __nixfab_complete
    set -l before (commandline -opc)
    set -l cur (commandline -ct)
    set -l binary $before[1]
    set -e before[1]
    set -l prefix ""
    if string match -qr -- '^--[^=]+=' $cur
        set prefix (string replace -r -- '=.*$' '=' $cur)
        set -a before (string replace -r -- '=.*$' '' $cur)
        set cur (string replace -r -- '^[^=]*=' '' $cur)
    end

    if string match -q -- '-*' $cur
        $binary --complete -- $binary $before $cur 2>/dev/null
        return
    end

    set -l python (__nixfab_python $binary)
    set -l mode
    switch "$before[-1]"
        case --host
            set mode hosts
        case --tag
            set mode tags
    end
    set -l candidates
    if test -n "$mode"
        set -l options
        for i in (seq (count $before))
            set -l next (math $i + 1)
            switch $before[$i]
                case --inventory -i
                    test $next -le (count $before); and set -a options --inventory $before[$next]
                case '--inventory=*'
                    set -a options --inventory (string replace -- '--inventory=' '' $before[$i])
                case --flake
                    test $next -le (count $before); and set -a options --flake $before[$next]
                case '--flake=*'
                    set -a options --flake (string replace -- '--flake=' '' $before[$i])
            end
        end
        set candidates ($python -m deploy.cli.completion $mode $options $cur 2>/dev/null)
    else
        set candidates ($python -m deploy.cli.completion words --binary $binary --current $cur -- $before 2>/dev/null)
    end
    if test (count $candidates) -gt 0
        for candidate in $candidates
            echo $prefix$candidate
        end
    else
        __fish_complete_path $cur
    end
end

for binary in inv invoke nixfab
    complete --command $binary --erase
    complete --command $binary --no-files --arguments '(__nixfab_complete)'
end
