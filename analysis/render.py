"""A table of display strings with a best-cell mask, rendered as Markdown, LaTeX (booktabs) or CSV."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pandas as pd

FORMATS = ("markdown", "latex", "csv")
EXTENSIONS = {"markdown": "md", "latex": "tex", "csv": "csv"}


@dataclass
class Table:
    """One output table.

    Attributes:
        name: file stem, e.g. ``"table1_retrieval"``.
        title: one line shown above the table (a caption in LaTeX).
        frame: display strings [rows, cols]; the first ``label_cols`` columns are row labels.
        best: bool mask like ``frame`` (True = best in its column), or None.
        notes: sentences printed under the table (Markdown, LaTeX; CSV files are data only).
        values: the numbers behind the cells (e.g. means), for callers and tests; not rendered.
    """

    name: str
    title: str
    frame: pd.DataFrame
    best: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    values: pd.DataFrame | None = None
    label_cols: int = 1

    def is_best(self, i: int, j: int) -> bool:
        return self.best is not None and bool(self.best.iat[i, j])


# ----------------------------------------------------------------------------------------------------------
# Markdown


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(t: Table) -> str:
    cols = list(t.frame.columns)
    lines = [f"### {t.title}", ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in cols) + " |")
    lines.append("|" + "|".join(":---" if j < t.label_cols else "---:" for j in range(len(cols))) + "|")
    for i in range(len(t.frame)):
        cells = []
        for j in range(len(cols)):
            s = _md_cell(t.frame.iat[i, j])
            cells.append(f"**{s}**" if t.is_best(i, j) else s)
        lines.append("| " + " | ".join(cells) + " |")
    if t.notes:
        lines.append("")
        lines.extend(f"- {n}" for n in t.notes)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# LaTeX

# Text-mode specials first; the unicode the tables use goes to math or LaTeX commands. One pass over the
# characters so that the backslashes and dollars we produce are never escaped again.
_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"$<$",
    ">": r"$>$",
    "|": r"$|$",
    "±": r"$\pm$",
    "→": r"$\to$",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "²": r"$^2$",
    "³": r"$^3$",
    "τ": r"$\tau$",
    "α": r"$\alpha$",
    "β": r"$\beta$",
    "λ": r"$\lambda$",
    "Δ": r"$\Delta$",
    "σ": r"$\sigma$",
    "δ": r"$\delta$",
    "γ": r"$\gamma$",
    "†": r"$\dagger$",
    "✓": r"\checkmark{}",
    "–": "--",
    "—": "---",
    "−": "$-$",
}


def latex_escape(s: str) -> str:
    """Escape LaTeX specials (``\\ & % $ # _ { } ~ ^``) and map ``± → τ α β λ δ † ² ³ ✓ –`` to LaTeX."""
    return "".join(_LATEX.get(ch, ch) for ch in str(s))


def to_latex(t: Table) -> str:
    cols = list(t.frame.columns)
    spec = "".join("l" if j < t.label_cols else "r" for j in range(len(cols)))
    out = [
        f"% {latex_escape(t.title)}",
        "% needs \\usepackage{booktabs,amssymb}",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{latex_escape(t.title)}}}",
        f"\\label{{tab:{t.name}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(latex_escape(c) for c in cols) + " \\\\",
        "\\midrule",
    ]
    for i in range(len(t.frame)):
        cells = []
        for j in range(len(cols)):
            s = latex_escape(t.frame.iat[i, j])
            cells.append(f"\\textbf{{{s}}}" if t.is_best(i, j) else s)
        out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    if t.notes:
        out.append("\\par\\smallskip{\\footnotesize " + " ".join(latex_escape(n) for n in t.notes) + "}")
    out.append("\\end{table}")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------------
# CSV


def to_csv(t: Table) -> str:
    """The cells as CSV; a best cell ends in ``*`` (CSV has no bold)."""
    frame = t.frame.copy()
    if t.best is not None:
        for j in range(frame.shape[1]):
            col = frame.iloc[:, j].astype(str)
            frame.iloc[:, j] = [f"{s}*" if t.is_best(i, j) else s for i, s in enumerate(col)]
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def render(t: Table, fmt: str) -> str:
    """``t`` in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "markdown":
        return to_markdown(t)
    if fmt == "latex":
        return to_latex(t)
    if fmt == "csv":
        return to_csv(t)
    raise ValueError(f"format={fmt!r} is invalid: allowed one of {', '.join(FORMATS)}")
