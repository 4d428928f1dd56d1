"""The reverb-py benchmark suite: reverb-py against soketi on one core each, same load, same run.

`python -m benchmarks run` starts the servers itself (pinned to one CPU), drives them with the C
load generator `loadgen.c` (pinned to another) and writes JSON results plus a table of medians and
ratios. See benchmarks/README.md for the method.
"""
