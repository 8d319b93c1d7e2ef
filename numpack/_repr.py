"""Text and HTML reprs of NumPack and LazyArray (what a person sees in a REPL or Jupyter).

Array names and paths are user input: everything that goes into HTML passes `html.escape`.
"""

from __future__ import annotations

import datetime
import html

import numpy as np

# One-line NumPack repr: at most this many arrays are listed.
REPR_ARRAYS = 6
# HTML table of a NumPack: at most this many rows.
HTML_ARRAYS = 100
# LazyArray preview: this many rows from each end, and columns (axis 1) from each end when there
# are more than COLUMN_LIMIT of them (like NumPy's edgeitems when it summarises).
EDGE_ROWS = 3
EDGE_COLUMNS = 3
COLUMN_LIMIT = 8
# Read the preview rows in one go up to this size; wider rows are sliced from the mapping, or
# read one at a time up to ROW_LIMIT bytes each; wider still and the preview is left out.
PREVIEW_BYTES = 8 << 20
ROW_LIMIT = 64 << 20

_STYLE = "text-align: right; font-family: monospace"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def human_bytes(n: int) -> str:
    """1023 B, 1.0 KiB, 4.2 MiB, ..."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def human_time(modified_us: int) -> str:
    """Local time of a modification stamp (microseconds since the epoch), to the second."""
    try:
        t = datetime.datetime.fromtimestamp(modified_us / 1e6)
    except (OverflowError, OSError, ValueError):
        return str(modified_us)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def ratio(compression: dict | None) -> float | None:
    """raw bytes / stored bytes of a compressed array; None for raw (or empty) arrays."""
    if not compression or not compression.get("stored_bytes"):
        return None
    return compression["raw_bytes"] / compression["stored_bytes"]


def compression_text(compression: dict | None) -> str:
    """'none', or e.g. 'zstd level 3, 4.21x'."""
    if compression is None:
        return "none"
    text = f"{compression.get('codec', 'zstd')} level {compression.get('level')}"
    r = ratio(compression)
    return text if r is None else f"{text}, {r:.2f}x"


# -- NumPack ----------------------------------------------------------------------------------


def store_repr(npk) -> str:
    if npk._store is None:
        return f"NumPack({npk.path!r}, closed)"
    try:
        entries = npk._entries()
    except Exception as e:  # a repr must not raise, whatever state the store is in
        return f"NumPack({npk.path!r}, backend={npk.backend!r}, unreadable: {e})"
    items = []
    for name, dtype, shape, _, _, _, _, comp in entries[:REPR_ARRAYS]:
        mark = " zstd" if comp is not None else ""
        items.append(f"{name!r}: {tuple(shape)} {np.dtype(dtype).name}{mark}")
    if len(entries) > REPR_ARRAYS:
        items.append(f"... +{len(entries) - REPR_ARRAYS} more")
    count = f"{len(entries)} array" + ("" if len(entries) == 1 else "s")
    listing = f": {', '.join(items)}" if items else ""
    return f"NumPack({npk.path!r}, backend={npk.backend!r}, {count}{listing})"


def store_html(npk) -> str:
    head = f"<b>NumPack</b> <code>{_e(npk.path)}</code>"
    if npk._store is None:
        return f"<div>{head} (closed)</div>"
    try:
        entries = npk._entries()
    except Exception as e:
        return f"<div>{head} backend <code>{_e(npk.backend)}</code>: unreadable ({_e(e)})</div>"
    disk = sum(e.bytes_on_disk for e in entries)
    count = f"{len(entries)} array" + ("" if len(entries) == 1 else "s")
    parts = [
        "<div>",
        f"<p>{head} &middot; backend <code>{_e(npk.backend)}</code> &middot; {count} &middot; "
        f"{_e(human_bytes(disk))} on disk</p>",
    ]
    if entries:
        columns = ("name", "shape", "dtype", "size on disk", "compression ratio")
        columns += ("rows dropped", "modified")
        parts.append("<table><thead><tr>")
        parts += [f"<th>{c}</th>" for c in columns]
        parts.append("</tr></thead><tbody>")
        for name, dtype, shape, dropped, modified, _, size, comp in entries[:HTML_ARRAYS]:
            r = ratio(comp)
            if r is None:
                comp_cell = "&mdash;"
            else:
                comp_cell = f'<span title="{_e(compression_text(comp))}">{r:.2f}</span>'
            parts.append(
                "<tr>"
                f'<td style="text-align: left"><code>{_e(name)}</code></td>'
                f'<td style="{_STYLE}">{_e(tuple(shape))}</td>'
                f'<td style="{_STYLE}">{_e(np.dtype(dtype).name)}</td>'
                f'<td style="{_STYLE}" title="{size} bytes">{_e(human_bytes(size))}</td>'
                f'<td style="{_STYLE}">{comp_cell}</td>'
                f'<td style="{_STYLE}">{int(dropped)}</td>'
                f'<td style="{_STYLE}" title="{int(modified)} us since the epoch">'
                f"{_e(human_time(modified))}</td>"
                "</tr>"
            )
        parts.append("</tbody></table>")
        if len(entries) > HTML_ARRAYS:
            parts.append(f"<p>... and {len(entries) - HTML_ARRAYS} more arrays</p>")
    parts.append("</div>")
    return "".join(parts)


# -- LazyArray --------------------------------------------------------------------------------


def lazy_repr(lz) -> str:
    dropped = lz._view.dropped
    return (
        f"LazyArray({lz._name!r}, shape={lz.shape}, dtype={lz.dtype}, "
        f"compression={compression_text(lz._compression)!r}"
        + (f", rows_dropped={dropped}" if dropped else "")
        + f", path={lz._path!r}, backend={lz._backend!r})"
    )


def lazy_html(lz) -> str:
    comp = lz._compression
    comp_text = compression_text(comp)
    if comp is not None:
        comp_text += f" ({human_bytes(comp['stored_bytes'])} stored)"
    facts = [
        ("shape", str(lz.shape)),
        ("dtype", str(lz.dtype)),
        ("size", human_bytes(lz.nbytes) + " in memory"),
        ("compression", comp_text),
        ("rows dropped", str(lz._view.dropped)),
        ("source", None),
    ]
    parts = [f"<div><b>LazyArray</b> <code>{_e(lz._name)}</code><table><tbody>"]
    for key, value in facts:
        if value is None:  # the source, with its pieces marked up
            value_html = (
                f"<code>{_e(lz._path)}</code>, array <code>{_e(lz._name)}</code>, "
                f"backend <code>{_e(lz._backend)}</code>"
            )
        else:
            value_html = _e(value)
        parts.append(f'<tr><th style="text-align: left">{key}</th><td>{value_html}</td></tr>')
    parts.append("</tbody></table>")
    parts.append(_preview_html(lz))
    parts.append("</div>")
    return "".join(parts)


def _columns(ncols: int) -> list[int]:
    if ncols <= COLUMN_LIMIT:
        return list(range(ncols))
    return list(range(EDGE_COLUMNS)) + list(range(ncols - EDGE_COLUMNS, ncols))


def preview_rows(lz):
    """(row numbers, rows) of the first and last EDGE_ROWS rows with their axis 1 cut to
    `_columns`, reading only those rows; None when rows are too wide to read for a preview."""
    n = len(lz)
    if n <= 2 * EDGE_ROWS:
        index = list(range(n))
        spans = [(0, n)]
    else:
        index = list(range(EDGE_ROWS)) + list(range(n - EDGE_ROWS, n))
        spans = [(0, EDGE_ROWS), (n - EDGE_ROWS, n)]
    cols = _columns(lz.shape[1]) if lz.ndim > 1 else None

    def cut(rows: np.ndarray) -> np.ndarray:
        return rows if cols is None or len(cols) == lz.shape[1] else rows[:, cols]

    row_bytes = lz.itemsize * int(np.prod(lz.shape[1:], dtype=np.int64))
    if len(index) * row_bytes <= PREVIEW_BYTES:
        rows = [cut(lz._read(slice(a, b))) for a, b in spans]
    else:
        mapped = lz._mapped()
        if mapped is not None:  # copies only the cells shown; the OS reads their pages
            rows = [np.array(cut(mapped[a:b])) for a, b in spans]
        elif row_bytes <= ROW_LIMIT:  # one row in memory at a time
            rows = [cut(lz._read(slice(i, i + 1))) for i in index]
        else:
            return None
    if not rows:
        return index, np.empty((0,) + lz.shape[1:], lz.dtype)
    return index, np.concatenate(rows)


def _float(x) -> str:
    a = abs(float(x))
    if np.isfinite(a) and a != 0 and (a >= 1e16 or a < 1e-4):
        return np.format_float_scientific(x, precision=6, trim="0")
    return np.format_float_positional(x, precision=6, trim="0")


def _cell(value) -> str:
    """A scalar as NumPy would show it at 6 digits ('1.5', '9999.0', '1.0e+20', 'nan'); a
    sub-array (rows of 3-D and wider arrays) summarised on one line."""
    if isinstance(value, np.ndarray):
        text = np.array2string(value, precision=6, threshold=6, edgeitems=2, max_line_width=10**6)
        return " ".join(text.split())
    if isinstance(value, np.floating):
        return _float(value)
    if isinstance(value, np.complexfloating):
        imag = _float(value.imag)
        return f"{_float(value.real)}{'' if imag[0] in '+-' else '+'}{imag}j"
    return str(value)


def _preview_html(lz) -> str:
    if len(lz) == 0:
        return "<p>(no rows)</p>"
    got = preview_rows(lz)
    if got is None:
        return "<p>(no preview: rows too wide to read)</p>"
    index, rows = got
    n = len(lz)
    cols = _columns(lz.shape[1]) if lz.ndim > 1 else None
    gap = "&hellip;"
    parts = ["<table><thead><tr><th></th>"]
    if cols is None:
        parts.append(f'<th style="{_STYLE}"></th>')
    else:
        for j, c in enumerate(cols):
            if j and c != cols[j - 1] + 1:
                parts.append(f'<th style="{_STYLE}">{gap}</th>')
            parts.append(f'<th style="{_STYLE}">{c}</th>')
    parts.append("</tr></thead><tbody>")
    width = 1 if cols is None else len(cols) + (len(cols) < lz.shape[1])
    for k, (i, row) in enumerate(zip(index, rows)):
        if k and i != index[k - 1] + 1:
            parts.append(
                "<tr><th>&vellip;</th>"
                + "".join(f'<td style="{_STYLE}">&vellip;</td>' for _ in range(width))
                + "</tr>"
            )
        parts.append(f'<tr><th style="{_STYLE}">{i}</th>')
        if cols is None:
            parts.append(f'<td style="{_STYLE}">{_e(_cell(row))}</td>')
        else:
            for j, c in enumerate(cols):
                if j and c != cols[j - 1] + 1:
                    parts.append(f'<td style="{_STYLE}">{gap}</td>')
                parts.append(f'<td style="{_STYLE}">{_e(_cell(row[j]))}</td>')
        parts.append("</tr>")
    parts.append("</tbody></table>")
    shown = len(index) < n
    parts.append(
        f"<p>preview: {'first and last ' + str(EDGE_ROWS) if shown else 'all'} of {n} rows</p>"
    )
    return "".join(parts)
