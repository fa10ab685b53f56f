"""--plot with names the fonts cannot draw: one `trends: note:` line, no warning per glyph."""

from __future__ import annotations

import warnings
from datetime import date, timedelta
from types import SimpleNamespace

import pytest

pytest.importorskip("matplotlib")

CJK = "株式会社"


def _result():
    return SimpleNamespace(
        by=("brand",), trend_table="trend_posts_day", positive="positive",
        negative="negative", alpha=0.01,
    )  # fmt: skip


def _rows(brands):
    return [
        {
            "brand": brand,
            "bucket": date(2024, 1, 1) + timedelta(days=day),
            "volume": 10,
            "net_index": 0.1 * (day % 3),
            "z_score": 0.5,
            "is_shift": False,
        }
        for brand in brands
        for day in range(6)
    ]


@pytest.fixture
def dejavu_only():
    """matplotlib's own DejaVu Sans alone, as on a machine with no CJK font."""
    import matplotlib

    with matplotlib.rc_context({"font.family": ["DejaVu Sans"]}):
        yield


def test_missing_glyphs_are_one_note_naming_the_labels(tmp_path, capsys, dejavu_only):
    from marketpulse.trends.plot import plot_trends

    out = tmp_path / "cjk.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_trends(_result(), out, _rows(["Acme", CJK, "Ünïcode Brand"]))
    glyphs = [w for w in caught if "missing from font" in str(w.message)]
    assert glyphs == [], [str(w.message) for w in glyphs]
    assert out.stat().st_size > 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("trends: note:")]
    assert len(notes) == 1, err
    assert CJK in notes[0] and str(out) in notes[0]
    assert "Acme" not in notes[0] and "Ünïcode" not in notes[0]  # drawable: not named


def test_names_the_fonts_draw_get_no_note_and_other_warnings_still_show(
    tmp_path, capsys, dejavu_only, monkeypatch
):
    from marketpulse.trends import plot

    real = plot.draw_trends

    def noisy(*args, **kw):
        warnings.warn("something else", UserWarning, stacklevel=1)
        return real(*args, **kw)

    monkeypatch.setattr(plot, "draw_trends", noisy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot.plot_trends(_result(), tmp_path / "a.png", _rows(["Acme", "Ünïcode Brand"]))
    assert [str(w.message) for w in caught] == ["something else"]
    assert "trends: note:" not in capsys.readouterr().err
