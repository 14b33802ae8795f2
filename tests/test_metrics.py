"""Harness metrics against hand-computed values."""
import math

import numpy as np
import pytest

from calib.harness import metrics as M
from calib.harness.stats import db


def ctx(sample=None, names=("y",), metadata=None, labels=False):
    return M.MetricContext(list(names), metadata or {}, sample or {}, labels)


def bound(metric, sample=None, **kw):
    metric.bind(ctx({"y": sample} if sample is not None else None, **kw))
    return metric


def test_topk_hand_computed():
    s = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    y = np.array([1, 1, 0])
    t1 = bound(M.TopK(1))
    assert t1.update({"y": s}, y).tolist() == [1.0, 0.0, 0.0]
    t2 = bound(M.TopK(2))
    # sample 0: top2 {1,2} has 1; sample 1: top2 {0,1} has 1; sample 2: top2 {2,1} lacks 0
    assert t2.update({"y": s}, y).tolist() == [1.0, 1.0, 0.0]
    # k larger than the number of classes: always right
    assert bound(M.TopK(5)).update({"y": s}, y).tolist() == [1.0, 1.0, 1.0]


def test_topk_ties_go_to_the_lower_class_index_as_argmax_breaks_them():
    # label 3 ties with classes 1 and 2 at 0.5: it ranks third (MobileNetV2 INT8 has such a tie
    # at fifth place on one sample photo; argpartition used to count it either way)
    s = np.array([[0.1, 0.5, 0.5, 0.5, 0.0], [0.1, 0.5, 0.5, 0.5, 0.0], [1, 2, 3, 4, 5.0]])
    y = np.array([3, 1, -1])                       # -1: unlabelled, never a hit
    assert bound(M.TopK(2)).update({"y": s}, y).tolist() == [0.0, 1.0, 0.0]
    assert bound(M.TopK(3)).update({"y": s}, y).tolist() == [1.0, 1.0, 0.0]
    rng = np.random.default_rng(0)
    s = rng.integers(0, 6, size=(300, 20)).astype(np.float32)     # many ties
    y = rng.integers(0, 20, 300)
    for k in (2, 5):
        ref = [float(y[i] in np.argsort(-s[i], kind="stable")[:k]) for i in range(len(y))]
        assert bound(M.TopK(k)).update({"y": s}, y).tolist() == ref


def test_topk_squeezenet_shape():
    s = np.zeros((2, 5, 1, 1))
    s[0, 3] = 1
    s[1, 1] = 1
    assert bound(M.TopK(1)).update({"y": s}, np.array([3, 2])).tolist() == [1.0, 0.0]


def test_top1_agreement():
    r = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    c = np.array([[0.9, 0.1], [1.0, 0.0], [2.0, 1.5]])
    assert bound(M.Top1Agreement()).update({"y": r}, {"y": c}, None).tolist() == [1.0, 0.0, 1.0]


def test_kl_logits_hand_computed():
    r = np.array([[0.0, 0.0]])          # softmax [0.5, 0.5]
    c = np.array([[math.log(3.0), 0.0]])  # softmax [0.75, 0.25]
    m = bound(M.KLDivergence(), r)
    assert m.probabilities is False
    expect = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert m.update({"y": r}, {"y": c}, None)[0] == pytest.approx(expect, rel=1e-12)


def test_kl_detects_probabilities_squeezenet_layout():
    p = np.array([[0.5, 0.5], [0.9, 0.1]]).reshape(2, 2, 1, 1)
    q = np.array([[0.75, 0.25], [0.9, 0.1]]).reshape(2, 2, 1, 1)
    m = bound(M.KLDivergence(), p)
    assert m.probabilities is True
    v = m.update({"y": p}, {"y": q}, None)
    assert v[0] == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert v[1] == pytest.approx(0.0, abs=1e-12)
    # same numbers treated as logits would give another value: detection matters
    assert not M.looks_like_probabilities(np.array([[2.0, -1.0]]))
    assert not M.looks_like_probabilities(np.array([[0.2, 0.2]]))


def test_cosine_and_sqnr():
    r = np.array([[3.0, 4.0], [1.0, 0.0]])
    c = np.array([[3.0, 4.0], [0.0, 1.0]])
    cos = bound(M.Cosine()).update({"y": r}, {"y": c}, None)
    assert cos.tolist() == pytest.approx([1.0, 0.0])
    num, den = bound(M.SQNR()).update({"y": r}, {"y": c}, None)
    assert num.tolist() == [25.0, 1.0] and den.tolist() == [0.0, 2.0]
    # aggregate over samples: 10 log10(26 / 2)
    assert M.SQNR().transform(num.sum() / den.sum()) == pytest.approx(10 * math.log10(13.0))
    assert db(math.inf) == math.inf


def test_cosine_zero_vectors():
    r = np.zeros((2, 3))
    c = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    assert bound(M.Cosine()).update({"y": r}, {"y": c}, None).tolist() == [1.0, 0.0]


def test_abs_and_relative_errors():
    r = np.array([[1.0, -2.0, 0.0, 4.0]])
    c = np.array([[1.5, -2.0, 0.25, 3.0]])
    assert bound(M.MaxAbsError()).update({"y": r}, {"y": c}, None).tolist() == [1.0]
    num, den = bound(M.MeanAbsError()).update({"y": r}, {"y": c}, None)
    assert num[0] / den[0] == pytest.approx((0.5 + 0 + 0.25 + 1.0) / 4)
    num, den = bound(M.MeanRelError()).update({"y": r}, {"y": c}, None)
    assert num[0] / den[0] == pytest.approx(1.75 / 7.0)
    v = bound(M.RelL2Error()).update({"y": r}, {"y": c}, None)
    assert v[0] == pytest.approx(math.sqrt(0.25 + 0.0625 + 1.0) / math.sqrt(1 + 4 + 16))


def test_error_percentiles_histogram():
    m = bound(M.ErrorPercentiles(), np.zeros((1, 1000)))
    r = np.zeros((1, 1000))
    e = np.arange(1, 1001) / 1000.0        # 0.001 .. 1.0
    assert m.update({"y": r}, {"y": r + e}, None) is None
    s = m.summary()
    for q, exact in ((50, 0.5), (90, 0.9), (99, 0.99)):
        got = s["percentiles"][f"p{q:g}"]
        assert exact <= got <= exact * 10 ** (1 / 50) + 1e-12   # upper bin edge, <= 4.7% above
    assert s["max"] == pytest.approx(1.0)
    assert s["elements"] == 1000
    # streaming: two halves give the same counts as one batch
    m2 = bound(M.ErrorPercentiles(), np.zeros((1, 500)))
    m2.update({"y": r[:, :500]}, {"y": (r + e)[:, :500]}, None)
    m2.update({"y": r[:, 500:]}, {"y": (r + e)[:, 500:]}, None)
    assert (m2.counts == m.counts).all()
    # exact zeros have their own bin
    m3 = bound(M.ErrorPercentiles(), np.zeros((1, 4)))
    m3.update({"y": np.zeros((1, 4))}, {"y": np.array([[0, 0, 0, 2.0]])}, None)
    assert m3.percentile(50) == 0.0 and m3.percentile(100) == pytest.approx(2.0)


def test_iou_thresholded_maps():
    r = np.array([[[[0.1, 0.5], [0.9, 0.2]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    c = np.array([[[[0.4, 0.5], [0.1, 0.2]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    v = bound(M.MapIoU(0.3)).update({"y": r}, {"y": c}, None)
    # sample 0: ref {1, 2}, cand {0, 1}: inter 1, union 3; sample 1: both empty -> 1
    assert v.tolist() == pytest.approx([1 / 3, 1.0])
    assert M.MapIoU(0.3).name == "iou@0.3"


def test_retrieval_agreement():
    # 4 embeddings in two tight pairs; candidate swaps the neighbour of sample 3
    r = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    c = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.98, 0.05]])
    m = bound(M.RetrievalAgreement(max_samples=10))
    m.update({"y": r[:2]}, {"y": c[:2]}, None)
    m.update({"y": r[2:]}, {"y": c[2:]}, None)
    v = m.finish()
    # NN(ref): 0->1, 1->0, 2->3, 3->2 ; NN(cand): 0->1? (c3 is closer to c0 than c1 is?)
    rn = [1, 0, 3, 2]
    cn = []
    cc = c / np.linalg.norm(c, axis=1, keepdims=True)
    for i in range(4):
        s = cc @ cc[i]
        s[i] = -np.inf
        cn.append(int(np.argmax(s)))
    assert v.tolist() == [float(a == b) for a, b in zip(rn, cn)]
    assert v[2] == 0.0 and v[3] == 0.0
    # the cap bounds memory
    m = bound(M.RetrievalAgreement(max_samples=3))
    m.update({"y": r}, {"y": c}, None)
    assert m.kept == 3 and m.finish().shape == (3,)


def test_edit_distance():
    assert M.edit_distance("kitten", "sitting") == 3
    assert M.edit_distance("", "abc") == 3
    assert M.edit_distance("abc", "abc") == 0
    assert M.edit_distance("ab", "ba") == 2


def test_ctc_greedy_decode_and_cer():
    chars = ["a", "b", "c"]
    dec = M.CTCDecoder(chars)         # classes: 0 blank, 1 a, 2 b, 3 c, 4 space
    def onehot(seq, C=5):
        x = np.zeros((len(seq), C))
        x[np.arange(len(seq)), seq] = 1
        return x
    ref = np.stack([onehot([1, 1, 0, 1, 2, 4, 3]), onehot([0, 2, 2, 0, 0, 0, 0])])
    cand = np.stack([onehot([1, 0, 0, 1, 2, 4, 3]), onehot([0, 3, 3, 0, 0, 0, 0])])
    assert dec.decode(ref) == ["aab c", "b"]
    assert dec.decode(cand) == ["aab c", "c"]
    meta = {"character": "a\nb\nc\n"}
    agree = M.CTCAgreement()
    agree.bind(ctx({"y": ref}, metadata=meta))
    assert agree.update({"y": ref}, {"y": cand}, None).tolist() == [1.0, 0.0]
    cer = M.CER()
    cer.bind(ctx({"y": ref}, metadata=meta, labels=True))
    num, den = cer.update({"y": cand}, ["aab c", "bb"])
    assert num.tolist() == [0.0, 2.0] and den.tolist() == [5.0, 2.0]
    line = M.LineAccuracy()
    line.bind(ctx({"y": ref}, metadata=meta, labels=True))
    assert line.update({"y": ref}, ["aab c", "bb"]).tolist() == [1.0, 0.0]
    to_ref = M.CTCCerToReference()
    to_ref.bind(ctx({"y": ref}, metadata=meta))
    num, den = to_ref.update({"y": ref}, {"y": cand}, None)
    assert num.tolist() == [0.0, 1.0] and den.tolist() == [5.0, 1.0]


def test_user_function_metrics(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import numpy as np\n"
                 "def paired(ref, cand, labels):\n    return np.abs(ref - cand).sum(axis=1)\n"
                 "def single(out, labels):\n    return (out.argmax(1) == labels).astype(float)\n"
                 "def ratio(ref, cand, labels):\n    return np.ones(len(ref)), 2 * np.ones(len(ref))\n"
                 "def bad(ref, cand, labels):\n    return np.ones(7)\n")
    p = M.load_metric(f"{f}:paired")
    assert p.kind == "paired" and p.name == "paired"
    p.bind(ctx())
    r = np.array([[1.0, 2.0]])
    assert p.update({"y": r}, {"y": r + 1}, None).tolist() == [2.0]
    s = M.load_metric(f"{f}:single")
    assert s.kind == "engine"
    s.bind(ctx())
    assert s.update({"y": np.array([[0.0, 1.0]])}, np.array([1])).tolist() == [1.0]
    q = M.load_metric(f"{f}:ratio")
    q.bind(ctx())
    num, den = q.update({"y": r}, {"y": r}, None)
    assert num.tolist() == [1.0] and den.tolist() == [2.0]
    b = M.load_metric(f"{f}:bad")
    b.bind(ctx())
    with pytest.raises(M.MetricError, match="7 values"):
        b.update({"y": np.ones((2, 2))}, {"y": np.ones((2, 2))}, None)
    with pytest.raises(M.MetricError, match="not found"):
        M.load_metric(str(tmp_path / "nope.py") + ":f")
    with pytest.raises(M.MetricError, match="has no"):
        M.load_metric(f"{f}:missing")
    with pytest.raises(M.MetricError, match="unknown metric"):
        M.load_metric("no_such_metric")


def test_metric_decorator_registers():
    @M.metric("test_mean_shift", kind="paired", higher_is_better=False, ideal=0.0)
    def mean_shift(ref, cand, labels):
        return np.abs(cand.mean(axis=1) - ref.mean(axis=1))

    try:
        m = M.load_metric("test_mean_shift")
        assert m.higher_is_better is False and m.ideal == 0.0 and m.kind == "paired"
        m.bind(ctx())
        assert m.update({"y": np.zeros((1, 2))}, {"y": np.ones((1, 2))}, None).tolist() == [1.0]
    finally:
        M.REGISTRY.pop("test_mean_shift", None)


def test_metrics_for_task_drops_label_metrics_without_labels():
    names = [m.name for m in M.metrics_for_task("classification", has_labels=False)]
    assert "top1" not in names and "top1_agreement" in names
    names = [m.name for m in M.metrics_for_task("classification", has_labels=True)]
    assert names[:2] == ["top1", "top5"]
    with pytest.raises(M.MetricError):
        M.metrics_for_task("segmentation", True)
