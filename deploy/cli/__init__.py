"""The command-line edge: tasks' handlers, errors as exit codes, the nixfab program, completion."""
