"""A dependency-free SVG line chart: recall@10 (y) against mean query latency (x, log scale)."""
import math
from xml.sax.saxutils import escape

PALETTE = ["#d9480f", "#1c7ed6", "#2b8a3e", "#862e9c", "#e67700", "#495057", "#c2255c", "#0b7285"]
W, H = 760, 460
LEFT, RIGHT, TOP, BOTTOM = 70, 200, 40, 60


def recall_latency_svg(series, title):
    """series: [(label, [(latency_us, recall), ...]), ...] -> SVG text."""
    xs = [x for _, pts in series for x, _ in pts if x > 0]
    ys = [y for _, pts in series for _, y in pts]
    x_lo = 10 ** math.floor(math.log10(min(xs)))
    x_hi = 10 ** math.ceil(math.log10(max(xs)))
    y_lo = max(0.0, math.floor(min(ys) * 20) / 20)
    y_hi = 1.0
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x):
        return LEFT + pw * (math.log10(x) - math.log10(x_lo)) / (math.log10(x_hi) - math.log10(x_lo))

    def py(y):
        return TOP + ph * (1 - (y - y_lo) / (y_hi - y_lo))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{escape(title)}</text>']
    decade = x_lo
    while decade <= x_hi:
        for m in (1, 2, 5):
            x = decade * m
            if x_lo <= x <= x_hi:
                out.append(f'<line x1="{px(x):.1f}" y1="{TOP}" x2="{px(x):.1f}" y2="{TOP + ph}" stroke="#eee"/>')
                out.append(f'<text x="{px(x):.1f}" y="{TOP + ph + 16}" text-anchor="middle">{x:g}</text>')
        decade *= 10
    y = y_lo
    while y <= y_hi + 1e-9:
        out.append(f'<line x1="{LEFT}" y1="{py(y):.1f}" x2="{LEFT + pw}" y2="{py(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
        y += 0.05 if y_hi - y_lo > 0.2 else 0.01
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 18}" text-anchor="middle">'
               'mean latency per query, µs (log scale, one thread)</text>')
    out.append(f'<text transform="translate(18,{TOP + ph / 2}) rotate(-90)" text-anchor="middle">recall@10</text>')
    for i, (label, pts) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        pts = sorted(p for p in pts if p[0] > 0)
        path = " ".join(f"{px(x):.1f},{py(max(y, y_lo)):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(max(y, y_lo)):.1f}" r="3" fill="{color}"/>')
        ly = TOP + 10 + i * 20
        out.append(f'<line x1="{LEFT + pw + 14}" y1="{ly}" x2="{LEFT + pw + 34}" y2="{ly}" stroke="{color}" stroke-width="3"/>')
        out.append(f'<text x="{LEFT + pw + 40}" y="{ly + 4}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)
