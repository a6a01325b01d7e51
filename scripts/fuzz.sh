#!/bin/sh
# Build ferry with clang + libFuzzer + ASan in a scratch copy and run the
# harnesses.  Usage: scripts/fuzz.sh [seconds-per-harness] [name ...]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
[ $# -gt 0 ] && shift
work=${FUZZ_WORK:-/tmp/ferry-fuzz}
"$top/scripts/install-deps.sh"
rm -rf "$work" && mkdir -p "$work"
(cd "$top" && git ls-files -z | xargs -0 tar cf - ) | (cd "$work" && tar xf -)
cd "$work"
./autogen.sh >/dev/null
CC=clang CFLAGS="-g -O1 -fsanitize=fuzzer-no-link,address,undefined" \
    LDFLAGS="-fsanitize=address,undefined" \
    ./configure --enable-fuzzing >/dev/null
make -j"$(nproc)" >/dev/null
names=${*:-$(ls tests/fuzz | sed -n 's/^fuzz-\(.*\)\.c$/\1/p' | grep -v main)}
for n in $names; do
    mkdir -p "$top/tests/fuzz/crashes/$n" "$work/corpus-$n"
    cp "$top/tests/fuzz/corpus/$n/"* "$work/corpus-$n/" 2>/dev/null || true
    if [ "$n" = qcow2 ]; then
        python3 "$top/tests/corrupt/corrupt_images.py" "$work/corpus-$n" >/dev/null
        for f in "$work/corpus-$n"/*.qcow2; do
            case "$f" in *.b.qcow2) rm -f "$f" ;; esac
        done
    fi
    echo "fuzz-$n: $secs s"
    ./tests/fuzz/fuzz-"$n" -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="$top/tests/fuzz/crashes/$n/" "$work/corpus-$n" \
        2>&1 | tail -5
done
