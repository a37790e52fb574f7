from __future__ import annotations

import pytest

from cluster.config import Recipe, RecipeError, describe_keys, load_recipe, parse_override, parse_recipe

GOOD = """\
name: demo
seed: 7
cluster:
  num_cpus: 2
  dashboard: false
"""


def test_good_recipe_parses_with_types():
    r = parse_recipe(GOOD, "good.yaml")
    assert r.name == "demo" and r.seed == 7
    assert r.cluster.num_cpus == 2 and r.cluster.dashboard is False
    assert r.cluster.dashboard_host == "127.0.0.1"  # default: never bind beyond loopback unasked
    assert r.resolved_run_dir() == "runs/demo"


def test_unknown_key_names_file_line_and_closest_key():
    text = GOOD.replace("  num_cpus: 2", "  num_cpu: 2")
    with pytest.raises(RecipeError) as exc:
        parse_recipe(text, "bad.yaml")
    (problem,) = exc.value.problems
    assert problem.startswith("bad.yaml:4: cluster.num_cpu: unknown key")
    assert "did you mean 'num_cpus'?" in problem


def test_unknown_top_level_section_is_named():
    with pytest.raises(RecipeError) as exc:
        parse_recipe(GOOD + "clustr:\n  num_cpus: 1\n", "r.yaml")
    assert any("r.yaml:6: clustr: unknown key (did you mean 'cluster'?)" in p for p in exc.value.problems)


def test_mistyped_value_names_key_line_and_value():
    with pytest.raises(RecipeError) as exc:
        parse_recipe(GOOD.replace("dashboard: false", "dashboard: maybe"), "r.yaml")
    (problem,) = exc.value.problems
    assert problem.startswith("r.yaml:5: cluster.dashboard:") and "'maybe'" in problem


def test_out_of_range_value_is_refused():
    with pytest.raises(RecipeError) as exc:
        parse_recipe(GOOD.replace("num_cpus: 2", "num_cpus: 0"), "r.yaml")
    problem = exc.value.problems[0]
    assert "cluster.num_cpus" in problem and "greater than or equal to 1" in problem


def test_every_problem_is_reported_at_once():
    text = "name: x\nseed: nope\ncluster:\n  bogus: 1\n"
    with pytest.raises(RecipeError) as exc:
        parse_recipe(text, "r.yaml")
    assert len(exc.value.problems) == 2


def test_missing_required_key():
    with pytest.raises(RecipeError) as exc:
        parse_recipe("seed: 1\n", "r.yaml")
    assert exc.value.problems == ["r.yaml: name: required key is missing"]


def test_set_overrides_apply_with_yaml_types():
    r = parse_recipe(GOOD, "r.yaml", overrides=["cluster.num_cpus=1", "seed=3", "run_dir=/tmp/x"])
    assert r.cluster.num_cpus == 1 and r.seed == 3 and r.run_dir == "/tmp/x"


def test_set_override_errors_point_at_the_flag():
    with pytest.raises(RecipeError) as exc:
        parse_recipe(GOOD, "r.yaml", overrides=["cluster.num_cpus=lots"])
    assert exc.value.problems[0].startswith("--set: cluster.num_cpus:")
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        parse_override("cluster.num_cpus")
    with pytest.raises(RecipeError, match="not a section"):
        parse_recipe(GOOD, "r.yaml", overrides=["seed.x=1"])


def test_bad_yaml_and_wrong_shape():
    with pytest.raises(RecipeError, match=r"r.yaml:2: not valid YAML"):
        parse_recipe("name: a\n  bad: [1,\n", "r.yaml")
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        parse_recipe("- a\n- b\n", "r.yaml")


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_bad_run_name():
    with pytest.raises(RecipeError, match="name"):
        parse_recipe("name: ../escape\n", "r.yaml")


def test_every_key_is_documented():
    rows = describe_keys(Recipe)
    keys = {r[0] for r in rows}
    assert {"name", "seed", "cluster", "cluster.num_cpus", "cluster.address"} <= keys
    undocumented = [r[0] for r in rows if not r[3]]
    assert undocumented == []
    defaults = {r[0]: r[2] for r in rows}
    assert defaults["name"] == "required" and defaults["cluster.dashboard_host"] == "'127.0.0.1'"


def test_shipped_recipes_validate():
    from pathlib import Path

    recipes = sorted(Path("pipelines/recipes").glob("*.yaml"))
    assert recipes, "no recipes shipped"
    for path in recipes:
        load_recipe(path)
