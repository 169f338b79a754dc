"""Shared CLI plumbing: the client, output as tables or JSON, one-line errors."""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from nubes.client import ApiError, NubesClient
from nubes.errors import NubesError
from nubes.lab import LabError
from nubes.schemas.common import first_problem

# wide when piped, so tables stay readable in logs and CI output
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
P = ParamSpec("P")
R = TypeVar("R")


class Output(enum.StrEnum):
    table = "table"
    json = "json"


OutputOpt = typer.Option(Output.table, "--output", "-o", help="table or json")


def client() -> NubesClient:
    return NubesClient.from_config()


def error(message: str) -> None:
    """One error line on stderr (`fail` also exits)."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> None:
    error(message)
    raise typer.Exit(code)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """API errors become one clear line on stderr and a non-zero exit."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            fail(exc.detail)
        except ValidationError as exc:  # a request checked here before it is sent
            fail(first_problem(exc.errors())[1])
        except (NubesError, LabError) as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        raise AssertionError("unreachable")

    return wrapper


def show(items: BaseModel | Sequence[BaseModel], columns: Sequence[str], fmt: Output) -> None:
    rows = [items] if isinstance(items, BaseModel) else list(items)
    if fmt is Output.json:
        data: Any = [r.model_dump(mode="json") for r in rows]
        if isinstance(items, BaseModel):
            data = data[0]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    if isinstance(items, BaseModel):
        table = Table(show_header=False, box=None)
        for key, value in items.model_dump(mode="json").items():
            table.add_row(f"[bold]{key}[/bold]", _cell(value))
        console.print(table)
        return
    table = Table(*columns)
    for row in rows:
        data = row.model_dump(mode="json")
        table.add_row(*(_cell(data.get(c)) for c in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return "; ".join(f"{k}={','.join(map(str, v))}" for k, v in value.items())
    return str(value)
