#!/bin/sh
# Install everything, build, and run every test: the GTest unit tests (make
# check) and the pytest integration tests against Debian's qemu-img, qemu-io,
# nbdinfo and friends.  Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
./scripts/install-deps.sh || exit 1
./scripts/build.sh --enable-werror || exit 1

mkdir -p tests/results
make -j"$(nproc)" check > tests/results/make-check.txt 2>&1
unit_status=$?
grep -E '^(PASS|FAIL|ERROR|SKIP|XFAIL|XPASS):' tests/results/make-check.txt || true
if [ $unit_status -ne 0 ]; then
    # show the logs of what failed
    for log in $(find tests/unit -name '*.log'); do
        if grep -qE '^(not ok|Bail out)' "$log" 2>/dev/null; then
            echo "---- $log"; cat "$log"
        fi
    done
fi

# The Linux guest (Debian's cloud kernel + busybox) for the boot-path tests;
# cached outside the repository, about 15 s the first time.
if ! sh tests/guests/linux/build.sh > tests/results/linux-guest.txt 2>&1; then
    echo "warning: tests/guests/linux/build.sh failed; its tests will skip:"
    tail -5 tests/results/linux-guest.txt
fi

# The release tarball must build and pass its own tests too.
if make distcheck > tests/results/distcheck.txt 2>&1; then
    echo "PASS: make distcheck"
    echo "distcheck: pass" > tests/results/distcheck.status
else
    tail -30 tests/results/distcheck.txt
    echo "FAIL: make distcheck"
    echo "distcheck: fail" > tests/results/distcheck.status
fi

FERRY="$(pwd)/ferry" pytest-3 -n "$(nproc)" -rs -q tests/integration \
    --junitxml=tests/results/integration.xml
python3 scripts/test-summary.py tests/results/make-check.txt tests/results/integration.xml \
    tests/results/distcheck.status
