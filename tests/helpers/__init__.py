"""Helpers of the tests (no tests here), imported as ``tests.helpers.<module>``:

- released_port_*.py: float64 ports of KERN's released code; routing_reference.py: literal routings (also the
  baseline of benchmarks/bench_routing.py);
- toy_models.py: KERN models on the toy dataset; pair_union_cases.py: random cases of the pair-union ops;
- toy_tools.py: the tools' toy work folder behind the session fixture ``toy_tools`` (tests/conftest.py);
- tool_modules.py, benchmark_modules.py: scripts of tools/ and benchmarks/ imported as modules.

``REPO_ROOT``: the repository's root folder, for tests that read its configs, README or tools.
"""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
