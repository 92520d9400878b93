"""What the benches read from a worker's answers: the `Server-Timing` breakdown and percentiles."""


def timings(headers):
    """`Server-Timing` as {name: milliseconds}."""
    out = {}
    for part in headers.get("server-timing", "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


def pct(values, p):
    """The p-th percentile: the value at rank floor(p% of n) of the sorted values."""
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]
