#!/usr/bin/env bash
# House-style lint (STYLE.md): banned functions, line length, tabs, trailing blanks, file size.
set -uo pipefail
cd "$(dirname "$0")/.."

fail=0
files=$(git ls-files -co --exclude-standard -- 'src/*.c' 'src/*.h' 'tests/*.c' 'bench/*.c' 2>/dev/null)
[ -n "$files" ] || files=$(find src tests bench -name '*.[ch]' 2>/dev/null)

report() { echo "lint: $1" >&2; fail=1; }

banned='\b(strcpy|strcat|sprintf|vsprintf|gets|strtok|atoi|atol|atoll|system|strncpy|tmpnam|mktemp)[[:space:]]*\('
while IFS= read -r hit; do
    [ -n "$hit" ] && report "$hit: banned function (use nx_buf, snprintf, strtol with checks)"
done < <(grep -nE "$banned" $files /dev/null | grep -vE '^[^:]+:[0-9]+:[[:space:]]*(//|/?\*)')

while IFS= read -r hit; do
    [ -n "$hit" ] && report "$hit: line longer than 110 columns"
done < <(awk 'length($0) > 110 { print FILENAME ":" FNR }' $files)

while IFS= read -r hit; do
    [ -n "$hit" ] && report "$hit: tab or trailing whitespace"
done < <(grep -nE $'\t|[ ]+$' $files /dev/null | cut -d: -f1,2)

for f in $(echo "$files" | grep '^src/'); do
    n=$(wc -l < "$f")
    [ "$n" -gt 800 ] && report "$f: $n lines (over 800: split the concerns)"
done

[ $fail -eq 0 ] && echo "lint: ok ($(echo "$files" | wc -l) files)"
exit $fail
