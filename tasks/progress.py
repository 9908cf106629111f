"""Progress that people can see: log lines with counts and rates, and Prefect artifacts."""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tasks.settings import get_settings

# Largest PNG shown inline in a summary (a data: URL in the artifact, stored by the Prefect
# server): the 640x512 previews and loss curves are tens of kB.
INLINE_IMAGE_LIMIT = 512 * 1024  # bytes


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a flow or task run, sciflow's own logger outside.

    Outside a run the ``sciflow`` logger's level is ``SCIFLOW_LOG_LEVEL``; inside, Prefect's
    logging settings decide what reaches the run's logs.
    """
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        logger = logging.getLogger("sciflow")
        logger.setLevel(get_settings().log_level)
        return logger


def in_run() -> bool:
    """Whether this code runs inside a Prefect flow or task run."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def artifact_key(*parts: str) -> str:
    """A valid artifact key (lowercase letters, digits, dashes) from free text."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


class Progress:
    """Counts work done; logs count, total and rate at most every ``every_s`` seconds.

    Inside a Prefect run it also keeps a progress artifact up to date, so the UI shows a bar.

    Example:
        ```python
        with Progress(total=len(chunks), what="chunks", key="bloch") as progress:
            for chunk in chunks:
                simulate(chunk)
                progress.advance()
        ```
    """

    def __init__(
        self, total: int, what: str = "items", key: str | None = None, every_s: float = 5.0
    ) -> None:
        if total < 0:
            raise ValueError(f"total={total}; expected a count >= 0")
        self.total, self.what, self.every_s = total, what, every_s
        self.done = 0
        self._reported = -1
        self.logger = run_logger()
        self._key = artifact_key(key or what)
        self._artifact_id: Any = None
        self._start = self._last_report = time.perf_counter()

    def __enter__(self) -> Progress:
        if in_run():
            from prefect.artifacts import create_progress_artifact

            self._artifact_id = create_progress_artifact(
                0.0, key=self._key, description=f"{self.what} done"
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None and self._reported != self.done:
            self._report(force=True)

    @property
    def rate(self) -> float:
        """Items per second since the start."""
        elapsed = time.perf_counter() - self._start
        return self.done / elapsed if elapsed > 0 else 0.0

    def advance(self, count: int = 1) -> None:
        """Record ``count`` more items done."""
        self.done += count
        self._report(force=self.done >= self.total)

    def _report(self, force: bool) -> None:
        now = time.perf_counter()
        if not force and now - self._last_report < self.every_s:
            return
        self._last_report, self._reported = now, self.done
        percent = 100.0 * self.done / self.total if self.total else 100.0
        self.logger.info(
            "%s: %d/%d (%.1f%%), %.3g %s/s",
            self.what,
            self.done,
            self.total,
            percent,
            self.rate,
            self.what,
        )
        if self._artifact_id is not None:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self._artifact_id, min(percent, 100.0))


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured markdown table; columns in first-seen order."""
    if not rows:
        return "_(nothing)_"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [str(row.get(col, "")).replace("|", "\\|") for col in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def inline_images(images: Mapping[str, bytes]) -> str:
    """Markdown showing each PNG inline, as a ``data:`` URL any browser loads from the page.

    The run page cannot show a file path or a private ``s3://`` URI, and a presigned URL
    would put a credential in the artifact; the image itself can go. One larger than
    ``INLINE_IMAGE_LIMIT`` is named, not shown.

    Args:
        images: Caption (e.g. ``"SNR"``) to PNG bytes.
    """
    parts = []
    for caption, png in images.items():
        alt = re.sub(r"[\[\]\n]", " ", caption)
        if not png.startswith(b"\x89PNG"):
            raise ValueError(f"image {caption!r} is not a PNG; expected PNG bytes")
        if len(png) > INLINE_IMAGE_LIMIT:
            parts.append(f"_{alt}: {len(png) / 1024:.0f} KiB, too large to show here_")
            continue
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"**{alt}**\n\n![{alt}](data:image/png;base64,{data})")
    return "\n\n".join(parts)


def publish_summary(
    title: str,
    outputs: Sequence[Mapping[str, Any]],
    key: str,
    notes: str = "",
    images: Mapping[str, bytes] | None = None,
) -> str:
    """Publish a markdown artifact summarising a run's outputs; returns its text.

    Outside a Prefect run the summary is only logged.

    Args:
        title: Heading, e.g. the flow name.
        outputs: One row per output (name, URI, key numbers).
        key: Artifact key; the UI keeps its history across runs.
        notes: Markdown after the table.
        images: Caption to PNG bytes, shown inline after the notes (``inline_images``).
    """
    text = f"# {title}\n\n{markdown_table(outputs)}\n"
    if notes:
        text += f"\n{notes}\n"
    if images:
        text += f"\n{inline_images(images)}\n"
    if in_run():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(text, key=artifact_key(key), description=title)
    run_logger().info("%s: %d outputs", title, len(outputs))
    return text
