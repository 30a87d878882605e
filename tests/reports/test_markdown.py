"""The model cards' Markdown pieces."""

from reprotrain.reports.markdown import reproduce_section, table


def test_a_pipe_in_a_header_or_cell_does_not_add_a_column():
    lines = table(["format", "max |Δ| vs Keras"], [["tflite", "a|b\nc"]])
    assert lines[0] == "| format | max \\|Δ\\| vs Keras |"
    assert lines[1] == "|---|---|"
    assert lines[2] == "| tflite | a\\|b c |"
    # Every row splits into the same number of cells on unescaped pipes.
    cells = [len([c for c in line.replace("\\|", "").split("|")]) for line in lines]
    assert len(set(cells)) == 1


def test_reproduce_section_names_the_run_and_the_command():
    lines = reproduce_section("abc123", "python -m reprotrain reproduce abc123")
    assert lines[0] == "## Reproduce"
    assert "MLflow run: `abc123`" in lines
    assert lines[lines.index("```") + 1] == "python -m reprotrain reproduce abc123"
