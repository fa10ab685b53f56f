"""The --plot figure: every panel is read against one date axis."""

from __future__ import annotations

from datetime import date, timedelta
from types import SimpleNamespace

import pytest

pytest.importorskip("matplotlib")


def _rows():
    """Four brands over 8 days; B's last three days are empty (no index), so its line
    stops early, and A alone has a forecast fan running 4 days past the end."""
    rows = []
    for brand in "ABCD":
        for day in range(8):
            empty = brand == "B" and day >= 5
            rows.append(
                {
                    "brand": brand,
                    "bucket": date(2024, 1, 1) + timedelta(days=day),
                    "volume": 0 if empty else 10,
                    "net_index": None if empty else 0.1 * (day % 3),
                    "z_score": None if empty else 0.5,
                    "is_shift": brand == "B" and day == 4,
                }
            )
    fan = [
        {
            "brand": "A",
            "bucket": date(2024, 1, 8) + timedelta(days=step),
            "step": step,
            "forecast": 0.1,
            "lo_80": 0.0,
            "hi_80": 0.2,
            "lo_95": -0.1,
            "hi_95": 0.3,
        }
        for step in range(1, 5)
    ]
    return rows, fan


def test_every_panel_shares_one_date_axis_labelled_under_each_column():
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    from marketpulse.trends.plot import draw_trends

    result = SimpleNamespace(
        by=("brand",), trend_table="trend_posts_day", positive="positive",
        negative="negative", alpha=0.01,
    )  # fmt: skip
    rows, fan = _rows()
    fig = draw_trends(result, rows, fan)
    try:
        fig.canvas.draw()
        panels = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in panels] == ["B", "A", "C", "D"]  # the shift first
        limits = {ax.get_xlim() for ax in panels}
        assert len(limits) == 1, limits
        low, high = limits.pop()
        assert low <= mdates.date2num(date(2024, 1, 1))
        assert high >= mdates.date2num(date(2024, 1, 12))  # A's fan, on B's panel too
        # 2 x 3 grid, 4 panels: dates under D and under B's and A's columns (no panel
        # below them), not under the first panel, which has D below it
        labelled = [
            any(t.get_visible() and t.get_text() for t in ax.get_xticklabels()) for ax in panels
        ]
        assert labelled == [False, True, True, True]
    finally:
        plt.close(fig)
