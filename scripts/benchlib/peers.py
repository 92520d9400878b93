"""Peer ANN libraries measured on the same data and queries as edgerag: hnswlib and FAISS HNSW.

Both run single-threaded with M=32, ef_construction=200, over the same L2-normalised vectors with
inner-product distance (equal to cosine ranking). Latency is the mean per query of one batched call
per ef (so Python's per-call overhead does not penalise the peers) plus p50/p99 of single-query calls.
"""
import time

import numpy as np

M = 32
EF_CONSTRUCTION = 200


def recall_at_k(found, gt, k):
    hits = sum(len(set(row[:k]) & set(truth[:k])) for row, truth in zip(found, gt))
    return hits / (k * len(gt))


def _sweep(search_batch, search_one, queries, gt, k, efs, set_ef):
    rows = []
    for ef in efs:
        set_ef(max(ef, k))
        search_batch(queries[:64])  # warm caches
        t0 = time.perf_counter()
        found = search_batch(queries)
        mean_us = (time.perf_counter() - t0) * 1e6 / len(queries)
        single = []
        for q in queries[: min(len(queries), 2000)]:
            t = time.perf_counter_ns()
            search_one(q)
            single.append((time.perf_counter_ns() - t) / 1e3)
        rows.append({
            "ef": ef,
            "recall_at_10": recall_at_k(found, gt, k),
            "mean_us": mean_us,
            "p50_us": float(np.percentile(single, 50)),
            "p99_us": float(np.percentile(single, 99)),
            "qps": 1e6 / mean_us,
        })
    return rows


def hnswlib_curve(base, queries, gt, k, efs):
    import hnswlib

    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=base.shape[1])
    index.init_index(max_elements=len(base), M=M, ef_construction=EF_CONSTRUCTION, random_seed=42)
    index.set_num_threads(1)
    index.add_items(base, np.arange(len(base)))
    build_s = time.perf_counter() - t0
    rows = _sweep(
        lambda qs: index.knn_query(qs, k=k, num_threads=1)[0],
        lambda q: index.knn_query(q, k=k, num_threads=1),
        queries, gt, k, efs, index.set_ef)
    return {"name": "hnswlib", "build_s": build_s, "rows": rows}


def faiss_curve(base, queries, gt, k, efs):
    import faiss

    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    index = faiss.IndexHNSWFlat(base.shape[1], M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.add(base)
    build_s = time.perf_counter() - t0

    def set_ef(ef):
        index.hnsw.efSearch = ef

    rows = _sweep(
        lambda qs: index.search(qs, k)[1],
        lambda q: index.search(q[None, :], k),
        queries, gt, k, efs, set_ef)
    return {"name": "faiss-hnsw", "build_s": build_s, "rows": rows}


def latency_at_recall(rows, target, key="mean_us"):
    """Latency needed to reach `target` recall, linearly interpolated along the ef sweep."""
    pts = sorted((r["recall_at_10"], r[key]) for r in rows)
    for (r0, l0), (r1, l1) in zip(pts, pts[1:]):
        if r0 <= target <= r1:
            return l0 if r1 == r0 else l0 + (l1 - l0) * (target - r0) / (r1 - r0)
    return pts[0][1] if pts and pts[0][0] >= target else None
