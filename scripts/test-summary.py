#!/usr/bin/env python3
"""Add up make check's and pytest's counts into the final summary line."""
import re
import sys
import xml.etree.ElementTree as ET


def make_check_counts(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    counts = {}
    for key in ("PASS", "FAIL", "ERROR", "SKIP", "XFAIL", "XPASS"):
        m = re.findall(r"^# %s: +(\d+)" % key, text, re.M)
        counts[key] = int(m[-1]) if m else 0
    if not re.search(r"^# TOTAL:", text, re.M):
        counts["ERROR"] += 1        # make check did not get as far as a summary
    return counts["PASS"] + counts["XFAIL"], counts["FAIL"] + counts["ERROR"] + counts["XPASS"], counts["SKIP"]


def pytest_counts(path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return 0, 1, 0
    suites = [root] if root.tag == "testsuite" else list(root)
    tests = failed = skipped = 0
    for s in suites:
        tests += int(s.get("tests", 0))
        failed += int(s.get("failures", 0)) + int(s.get("errors", 0))
        skipped += int(s.get("skipped", 0))
    return tests - failed - skipped, failed, skipped


def main():
    up, uf, us = make_check_counts(sys.argv[1])
    ip, if_, is_ = pytest_counts(sys.argv[2])
    if len(sys.argv) > 3:
        try:
            ok = "pass" in open(sys.argv[3]).read()
        except OSError:
            ok = False
        up, uf = (up + 1, uf) if ok else (up, uf + 1)
    print("unit: %d passed, %d failed, %d skipped; integration: %d passed, "
          "%d failed, %d skipped" % (up, uf, us, ip, if_, is_))
    print("%d passed, %d failed" % (up + ip, uf + if_))
    sys.exit(1 if uf + if_ else 0)


main()
