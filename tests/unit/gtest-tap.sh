#!/bin/sh
# Run one GTest program with TAP output for automake's tap-driver.
G_DEBUG=fatal-warnings exec "$@" --tap
