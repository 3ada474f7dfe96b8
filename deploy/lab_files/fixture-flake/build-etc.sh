mkdir -p "$out"
printf '%s\n' "$hostName" > "$out/hostname"
printf '%s\n' "$revision" > "$out/lab-revision"
