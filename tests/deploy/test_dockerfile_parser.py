"""The Dockerfile reader that the image tests rely on."""

import pytest

from .dockerfile import build_args, final_stage, parse_dockerfile, run_commands

SAMPLE = """\
# syntax=docker/dockerfile:1
ARG BASE=python:3.11-slim
FROM ${BASE} AS build
RUN pip install \\
        --no-cache-dir \\
    # a comment inside the continuation is dropped
        build

FROM python:3.11-slim
COPY --from=build --chown=app:app /src /dst
COPY pyproject.toml README.md ./
USER app
HEALTHCHECK --interval=5s --timeout=3s CMD ["python", "-c", "print(1)"]
ENTRYPOINT ["tunefleet"]
CMD ["serve"]
"""


def test_continuation_lines_join_into_one_instruction_without_comments():
    run = [i for i in parse_dockerfile(SAMPLE) if i.keyword == "RUN"]
    assert len(run) == 1
    assert run[0].value == "pip install --no-cache-dir build"
    assert run[0].line == 4


def test_instructions_know_their_stage():
    instructions = parse_dockerfile(SAMPLE)
    assert [i.keyword for i in final_stage(instructions)] == [
        "FROM",
        "COPY",
        "COPY",
        "USER",
        "HEALTHCHECK",
        "ENTRYPOINT",
        "CMD",
    ]
    assert instructions[0].keyword == "ARG" and instructions[0].stage == -1


def test_flags_are_split_from_the_arguments():
    copy = next(i for i in parse_dockerfile(SAMPLE) if i.keyword == "COPY")
    assert copy.flags == {"from": "build", "chown": "app:app"}
    assert copy.arguments() == ["/src", "/dst"]
    check = next(i for i in parse_dockerfile(SAMPLE) if i.keyword == "HEALTHCHECK")
    assert check.flags == {"interval": "5s", "timeout": "3s"}
    assert check.value.startswith("CMD ")


def test_exec_form_is_parsed_as_json_and_shell_form_is_not():
    by_keyword = {i.keyword: i for i in parse_dockerfile(SAMPLE)}
    assert by_keyword["ENTRYPOINT"].exec_form() == ["tunefleet"]
    assert by_keyword["USER"].exec_form() is None


def test_build_args_keep_their_defaults():
    assert build_args(parse_dockerfile(SAMPLE)) == {"BASE": "python:3.11-slim"}


def test_run_commands_split_at_shell_operators_but_not_inside_quotes():
    run = parse_dockerfile('FROM x\nRUN a b && c "d; e" ; f || g\n')[1]
    assert run_commands(run) == [["a", "b"], ["c", "d; e"], ["f"], ["g"]]


@pytest.mark.parametrize(
    "text",
    [
        "RUN echo no base image\n",
        "FROM x\nRUN echo \\\n",
        "FROM x\nthis is not an instruction\n",
    ],
)
def test_malformed_dockerfiles_are_rejected(text):
    with pytest.raises(ValueError):
        parse_dockerfile(text)
