"""
The tcpdemo benchmark: harness, comparison peers and the historical steps of
the optimisation record (see BENCHMARKS.md).  Not part of the installed
package: run it from a checkout, with C{python -m benchmarks.bench}.
"""
