"""Import a script of tools/ (not a package) as a module, for the tests that call its ``main()`` in this process."""
import importlib.util
import os

from tests.helpers import REPO_ROOT



def load_tool(name: str):
    """tools/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(REPO_ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
