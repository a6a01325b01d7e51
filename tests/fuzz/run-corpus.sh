#!/bin/sh
# make check: every harness over its corpus, as a TAP test per harness.
srcdir=${FERRY_SRCDIR:-$(dirname "$0")/../..}
builddir=${FERRY_BUILDDIR:-.}
n=0
out=""
status=0
for h in "$builddir"/tests/fuzz/fuzz-*; do
    case "$h" in *.c|*.o|*.log|*.trs) continue ;; esac
    [ -x "$h" ] || continue
    name=$(basename "$h" | sed 's/^fuzz-//')
    corpus="$srcdir/tests/fuzz/corpus/$name"
    n=$((n + 1))
    if [ ! -d "$corpus" ] && [ "$name" = qcow2 ] && command -v qemu-img >/dev/null; then
        # qcow2's corpus is generated (no images in the repository)
        corpus=$(mktemp -d /tmp/ferry-corpus-qcow2.XXXXXX)
        python3 "$srcdir/tests/corrupt/corrupt_images.py" "$corpus" >/dev/null 2>&1
        rm -f "$corpus"/*.b.qcow2
        generated=$corpus
    fi
    if [ ! -d "$corpus" ]; then
        out="$out
ok $n - $name # SKIP no corpus directory tests/fuzz/corpus/$name"
    elif "$h" "$corpus" >/dev/null 2>&1; then
        out="$out
ok $n - $name corpus"
    else
        out="$out
not ok $n - $name corpus (run $h $corpus to see the failure)"
        status=1
    fi
done
echo "1..$n"
echo "$out" | sed '/^$/d'
[ -n "${generated:-}" ] && rm -rf "$generated"
exit $status
