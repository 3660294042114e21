"""The compiled extension behind `losslang` (built from runtime/python/src/lib.rs)."""

from typing import Any, List, Optional, Sequence, Tuple

class CompileError(Exception):
    code: str
    diagnostics: List[Tuple[str, str, str, int, int]]

class DataError(ValueError):
    code: str
    help: Optional[str]

class CompiledProgram:
    @property
    def name(self) -> str: ...
    @property
    def warnings(self) -> List[str]: ...
    @property
    def source_name(self) -> str: ...
    @property
    def input_decls(self) -> List[Tuple[str, str]]: ...
    @property
    def grad_names(self) -> List[str]: ...
    @property
    def state_decls(self) -> List[Tuple[str, str]]: ...
    def explain(self) -> str: ...
    def emit(self, stage: str) -> str: ...
    def export(self, target: str) -> str: ...

class Runner:
    def __init__(self, program: CompiledProgram, backend: str = "jit", threads: int = 1) -> None: ...
    def init_state(
        self, inputs: Sequence[Tuple[str, Any]], params: Sequence[Tuple[str, Any]]
    ) -> List[Tuple[str, Any]]: ...
    def call(
        self,
        inputs: Sequence[Tuple[str, Any]],
        params: Sequence[Tuple[str, Any]],
        state: Sequence[Tuple[str, Any]],
        grads: Optional[Sequence[Any]],
        state_out: Sequence[Any],
    ) -> Tuple[float, List[Tuple[str, Any]]]: ...
    def time_jit(
        self,
        inputs: Sequence[Tuple[str, Any]],
        params: Sequence[Tuple[str, Any]],
        state: Sequence[Tuple[str, Any]],
        grads: Optional[Sequence[Any]],
        state_out: Sequence[Any],
        iters: int,
    ) -> List[float]: ...

def compile_source(text: str, name: str, loss: Optional[str] = None) -> CompiledProgram: ...
def stdlib_source(name: str) -> Optional[str]: ...
def stdlib_names() -> List[str]: ...
