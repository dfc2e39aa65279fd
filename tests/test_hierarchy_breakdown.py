"""The hierarchy task's breakdown: kinds of query and kinds of wrong answer on the synthetic world."""

import numpy as np
import torch

from probclip.synthetic.evaluation import build_evaluation_set
from probclip.synthetic.hierarchy import synthetic_hierarchy_truth
from probclip.synthetic.hierarchy_breakdown import breakdown_tables, hierarchy_breakdown, mistake_kind, query_kinds
from probclip.synthetic.world import HELDOUT_COMBINATIONS, Scene, SceneObject, parse_caption


def _scene(*objects) -> Scene:
    return Scene(tuple(SceneObject(*o) for o in objects), 0)


RED_CIRCLE_BLUE_SQUARE = _scene(("circle", "red", "large", "top left"), ("square", "blue", "small", "bottom right"))


def test_mistake_kinds_say_why_a_caption_is_false():
    scene = RED_CIRCLE_BLUE_SQUARE
    assert mistake_kind(scene, parse_caption("a red square")) == "binding"
    assert mistake_kind(scene, parse_caption("a small circle at the top left")) == "binding"
    assert mistake_kind(scene, parse_caption("a red triangle")) == "absent shape"
    assert mistake_kind(scene, parse_caption("a green circle")) == "absent colour"
    assert mistake_kind(scene, parse_caption("a circle at the top right")) == "absent position"
    assert mistake_kind(scene, parse_caption("a green triangle")) == "absent several"
    swapped = parse_caption("only a large blue circle at the top left and a small red square at the bottom right")
    assert mistake_kind(scene, swapped) == "full scene"


def test_query_kinds_split_by_objects_and_held_out_combinations():
    eval_set = build_evaluation_set(0, num_scenes=60, num_degraded=1, num_zeroshot=1)
    kinds = query_kinds(eval_set, training_captions={"a shape", "a red shape"})
    images = kinds["image"]
    assert sum(m.astype(int) for m in images.values()).tolist() == [1] * 60  # a partition of the images
    for name, mask in images.items():
        for scene in np.asarray(eval_set.scenes, dtype=object)[mask]:
            assert (len(scene.objects) == 1) == name.startswith("1 object")
            held = any((o.shape, o.colour) in HELDOUT_COMBINATIONS for o in scene.objects)
            assert held == name.endswith("held-out combination")
    captions = kinds["caption"]
    assert (captions["seen combinations"] ^ captions["held-out combination"]).all()
    known = [c.text for c, k in zip(eval_set.captions, captions["in the training captions"]) if k]
    assert sorted(known) == ["a red shape", "a shape"]
    assert "in the training captions" not in query_kinds(eval_set)["caption"]


def test_breakdown_of_the_exact_truth_is_right_everywhere_and_of_a_wrong_score_names_its_mistakes():
    eval_set = build_evaluation_set(0, num_scenes=80, num_degraded=1, num_zeroshot=1)
    truth = synthetic_hierarchy_truth(eval_set)
    n_captions = len(eval_set.captions)
    exact = torch.as_tensor(np.concatenate([truth["general"], truth["image"]]), dtype=torch.float64)
    specific = torch.as_tensor(truth["specific"], dtype=torch.float64)
    breakdown = hierarchy_breakdown({"exact": exact}, {"exact": specific}, truth, eval_set)
    right = breakdown["exact"]
    for question in ("general, images", "general, captions", "specific, captions of levels 0-3"):
        values = [v["r_precision"] for v in right[question].values() if v["queries"]]
        assert values and all(v == 1.0 for v in values), (question, right[question])
    assert right["mistakes of image queries"]["all images"] == {"wrong": 0, "kinds": {}}
    assert right["mistakes of more specific, levels 0-3"] == {"wrong": 0, "kinds": {}}
    # a wrong score: every caption true of some test image ranks above every caption true of this one, so its
    # mistakes are captions false of the query image, each of the kind the world gives it
    anywhere = exact.clone()
    anywhere[n_captions:] = 1.5 * torch.as_tensor(truth["image"].any(0), dtype=torch.float64)[None] - exact[n_captions:]
    wrong = hierarchy_breakdown({"anywhere": anywhere}, {}, truth, eval_set)["anywhere"]
    assert "specific, captions of levels 0-3" not in wrong
    mistakes = wrong["mistakes of image queries"]["all images"]
    assert mistakes["wrong"] > 0 and abs(sum(k["share"] for k in mistakes["kinds"].values()) - 1) < 1e-9
    expected = {}
    for q, scene in enumerate(eval_set.scenes):
        row = anywhere[n_captions + q].numpy()
        n_right = int(truth["image"][q].sum())
        top = np.lexsort((np.arange(n_captions), -row))[:n_right]
        for j in top:
            if not truth["image"][q, j]:
                kind = mistake_kind(scene, eval_set.captions[j])
                expected[kind] = expected.get(kind, 0) + 1
    assert {k: v["count"] for k, v in mistakes["kinds"].items()} == expected
    assert wrong["general, images"]["1 object, seen combinations"]["r_precision"] < 1.0
    # "more specific" by the reverse of the truth: every wrong answer is counted by its caption's level
    levels = np.array([c.level for c in eval_set.captions])
    backwards = hierarchy_breakdown({"backwards": exact}, {"backwards": -specific}, truth, eval_set)["backwards"]
    wrong_levels = backwards["mistakes of more specific, levels 0-3"]
    expected = {}
    for q in np.nonzero(levels <= 3)[0]:
        row = -specific[q].numpy().copy()
        row[q] = -np.inf
        n_right = int(truth["specific"][q].sum())
        for j in np.lexsort((np.arange(n_captions), -row))[:n_right]:
            if not truth["specific"][q, j]:
                name = "level 5 (full scene)" if levels[j] == 5 else f"level {levels[j]}"
                expected[name] = expected.get(name, 0) + 1
    assert wrong_levels["wrong"] > 0 and {k: v["count"] for k, v in wrong_levels["kinds"].items()} == expected
    tables = breakdown_tables({**breakdown, "anywhere": wrong, "backwards": backwards})
    assert set(tables) == {"R-precision by kind of query: general, images",
                           "R-precision by kind of query: general, captions",
                           "R-precision by kind of query: specific, captions of levels 0-3",
                           "Wrong captions among an image's top R, by kind (share)",
                           'Wrong captions among the top R of "more specific" (levels 0-3), by their level (share)'}
    header, *rows = tables["R-precision by kind of query: general, images"]
    assert header[0] == "score" and [r[0] for r in rows] == ["exact", "anywhere", "backwards"]
    assert all(v == 1.0 for v in rows[0][1:] if v is not None)
