"""The plain-Python fallback of the Python worker (``python_worker.py``, whose docstring has the
protocol): Jupyter-like cells on the bare interpreter, for sandboxes without IPython.

The worker loads this file by its path when IPython cannot be imported or
``MCP_SANDBOX_NO_IPYTHON`` is set. Standard library only; runs on Python >= 3.8.
"""

from __future__ import annotations

import ast
import linecache
import sys
import traceback
import types
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

if TYPE_CHECKING:
    import asyncio

    from python_worker import Bundle, Cell

# Rich display, in the order IPython's formatter consults them.
REPR_METHODS: Tuple[Tuple[str, str], ...] = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
)
CO_COROUTINE = 0x0080  # inspect.CO_COROUTINE, without importing inspect


class PlainEngine:
    """Jupyter-like cells on the bare interpreter: the last expression is displayed."""

    name = "python"

    def __init__(self) -> None:
        # Like IPython, give user code a fresh __main__ so that pickle, dataclasses and
        # `if __name__ == "__main__"` see the user's namespace and not the worker's module.
        module = types.ModuleType("__main__")
        sys.modules["__main__"] = module
        self.namespace = module.__dict__
        self.namespace["display"] = self.display
        self._cell: Optional[Cell] = None  # the running cell's, set by run: user code runs only there
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def display(self, *objs: Any) -> None:
        """Add each object to the cell's results, formatted like a cell's last expression."""
        cell = self._cell
        for obj in objs:
            if cell is not None:
                cell.add(format_value(obj))

    def run(self, code: str, count: int, cell: Cell) -> None:
        self._cell = cell
        filename = "<cell %d>" % count
        # Registered so that tracebacks can quote the cell's source lines.
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            value = self._execute(code, filename)
            if value is not None:
                self.namespace["_"] = value
                cell.add(format_value(value))
        except BaseException as exc:
            cell.fail(exc, user_traceback(exc, filename))

    def _execute(self, code: str, filename: str) -> Any:
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        # dont_inherit: the worker's own `from __future__` imports must not apply to user code.
        tree = compile(code, filename, "exec", ast.PyCF_ONLY_AST | flags, dont_inherit=True)
        last: Optional[ast.Expression] = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        self._evaluate(compile(tree, filename, "exec", flags, dont_inherit=True))
        if last is None:
            return None
        return self._evaluate(compile(last, filename, "eval", flags, dont_inherit=True))

    def _evaluate(self, code: types.CodeType) -> Any:
        result = eval(code, self.namespace)
        if code.co_flags & CO_COROUTINE:
            result = self._await(result)
        return result

    def _await(self, coroutine: Any) -> Any:
        import asyncio

        # One loop for the worker's life, so tasks a cell starts keep running in later cells.
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        task = self._loop.create_task(coroutine)
        try:
            return self._loop.run_until_complete(task)
        finally:
            if not task.done():
                # An interrupted cell must not resume when a later cell runs the loop again:
                # deliver the cancellation now (one loop iteration) rather than leave it pending.
                task.cancel()
                self._loop.run_until_complete(asyncio.sleep(0))


def format_value(value: Any) -> Bundle:
    """A MIME bundle for value: repr() plus what its _repr_*_ methods offer, as IPython does."""
    bundle: Bundle = {"text/plain": repr(value)}
    if isinstance(value, type):
        return bundle  # a class's _repr_*_ are unbound methods, not representations of it
    methods: List[Tuple[str, Optional[str]]] = [("_repr_mimebundle_", None)]
    methods.extend(REPR_METHODS)
    for method, mime in methods:
        if not callable(getattr(value, method, None)):
            continue
        try:
            data = getattr(value, method)()
        except Exception:
            traceback.print_exc()
            continue
        if isinstance(data, tuple):  # (data, metadata)
            data = data[0]
        if data is None:
            continue
        if mime is None:
            if isinstance(data, dict):
                bundle.update(data)  # the object's own choice, text/plain included
        else:
            bundle.setdefault(mime, data)
    return bundle


def user_traceback(exc: BaseException, filename: str) -> List[str]:
    """The traceback from the cell's first frame on, without the worker's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip("\n").split("\n")
