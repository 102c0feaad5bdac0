"""The promotions picture the demo draws: valid SVG, one step line and legend entry per series."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from devstack.promotions_chart import render_svg

SVG = "{http://www.w3.org/2000/svg}"


def test_one_line_and_one_legend_entry_per_series() -> None:
    t = 1_795_000_000.0
    svg = render_svg(
        {"promote success": [(t, 0), (t + 60, 1), (t + 120, 3)], "repair success": [(t, 0), (t + 120, 1)]}, "Promotions"
    )
    root = ET.fromstring(svg)
    paths = root.findall(f"{SVG}path")
    assert len(paths) == 2
    texts = [e.text for e in root.iter(f"{SVG}text")]
    assert "promote success: 3" in texts and "repair success: 1" in texts and "Promotions" in texts
    # Steps: the line holds a count flat until it moves (two points per change after the first).
    assert paths[0].attrib["d"].count("L") == 5  # two per change, one to the last sample


def test_no_data_says_so() -> None:
    root = ET.fromstring(render_svg({}, "Promotions"))
    assert "no promotions recorded" in [e.text for e in root.iter(f"{SVG}text")]
