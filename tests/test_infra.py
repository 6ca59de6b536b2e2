"""The Azure deployment (``azure.yaml``, ``infra/``) checked without Azure.

The Bicep compiler cannot run here, so these tests hold the template to what the code
needs: every setting the app reads is set in Azure (or listed below with the reason it is
not), secrets reach the app only as Key Vault references, the storage account gets every
queue, table and container the code names (and each trigger's ``-poison`` queue) with the
data roles scoped to each, diagnostic settings send logs to the workspace, and the modules
are wired consistently. The
last test runs checkov's Bicep framework (``tools/checkov.sh``) and wants zero failed
checks, each skip explained next to the resource it excuses.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from shared import names
from shared.settings import Settings
from shared.signing import MIN_SECRET_BYTES, secrets_problem

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
PARAMETERS = INFRA / "main.parameters.json"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

#: Settings the code reads that the Bicep deliberately does not set, and why.
NOT_SET_IN_AZURE: dict[str, str] = {
    "SMARTDIALOG_ACCESS_TOKEN": "a static bearer token for the local sandbox only; Azure "
    "authenticates with the client secret or the refresh token",
    "AzureWebJobsStorage": "a connection string, for Azurite and local runs only; Azure uses "
    "the identity-based AzureWebJobsStorage__* settings (shared keys are disabled there)",
    "AzureWebJobsStorage__accountName": "an alternative to the service URIs, which the Bicep "
    "sets (they also serve the host's blob, queue and table clients)",
    "WEBSITE_HOSTNAME": "set by App Service itself to the app's host name; an app setting of "
    "that name would be overridden",
    "AZURE_FUNCTIONS_ENVIRONMENT": "set by the platform (Production in Azure); Development only "
    "under Core Tools and the dev host, where it allows localhost URLs",
}


# --- reading Bicep without the Bicep compiler -------------------------------------------


@dataclass(frozen=True)
class BicepSource:
    """One .bicep file: its text without comments, and without comments or strings."""

    path: Path
    raw: str = field(repr=False)
    no_comments: str = field(repr=False)
    code: str = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.relative_to(INFRA).as_posix()


def _scan(path: Path) -> BicepSource:
    """Blank out comments (and, in ``code``, string literals), keeping every offset."""
    text = path.read_text()
    no_comments = list(text)
    code = list(text)
    i, n = 0, len(text)

    def blank(buffer: list[str], start: int, end: int) -> None:
        for k in range(start, end):
            if buffer[k] != "\n":
                buffer[k] = " "

    def fail(what: str, at: int) -> typing.NoReturn:
        line = text.count("\n", 0, at) + 1
        raise AssertionError(f"{path.relative_to(ROOT)}:{line}: {what}")

    while i < n:
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            blank(no_comments, i, end)
            blank(code, i, end)
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                fail("unterminated /* comment", i)
            blank(no_comments, i, end + 2)
            blank(code, i, end + 2)
            i = end + 2
        elif text.startswith("'''", i):
            end = text.find("'''", i + 3)
            if end < 0:
                fail("unterminated ''' string", i)
            blank(code, i + 3, end)
            i = end + 3
        elif text[i] == "'":
            j, depth = i + 1, 0
            while True:
                if j >= n or (text[j] == "\n" and depth == 0):
                    fail("unterminated string", i)
                if text[j] == "\\":
                    j += 2
                elif depth == 0 and text[j] == "'":
                    break
                elif text.startswith("${", j):
                    depth, j = depth + 1, j + 2
                elif depth and text[j] == "}":
                    depth, j = depth - 1, j + 1
                elif depth and text[j] == "'":  # a string inside an interpolation
                    close = text.find("'", j + 1)
                    if close < 0:
                        fail("unterminated string", j)
                    j = close + 1
                else:
                    j += 1
            blank(code, i + 1, j)
            i = j + 1
        else:
            i += 1
    return BicepSource(path, text, "".join(no_comments), "".join(code))


@cache
def bicep_sources() -> tuple[BicepSource, ...]:
    return tuple(_scan(path) for path in sorted(INFRA.rglob("*.bicep")))


def source(name: str) -> BicepSource:
    return next(s for s in bicep_sources() if s.name == name)


def _block(code: str, open_at: int) -> tuple[int, int]:
    """The span of the bracketed block whose opening bracket is at ``open_at``."""
    pairs = {"{": "}", "[": "]", "(": ")"}
    stack: list[str] = []
    for k in range(open_at, len(code)):
        if code[k] in pairs:
            stack.append(pairs[code[k]])
        elif code[k] in pairs.values():
            stack.pop()
            if not stack:
                return open_at, k + 1
    raise AssertionError("unbalanced block")


def _top_level_keys(code: str, span: tuple[int, int]) -> list[str]:
    """Keys of the object literal in ``span`` (one ``key: value`` per line, as Bicep wants)."""
    keys, depth = [], 0
    for line in code[span[0] : span[1]].splitlines():
        match = re.match(r"\s*([A-Za-z_]\w*)\s*:", line)
        if depth == 1 and match:
            keys.append(match.group(1))
        depth += sum(line.count(c) for c in "{[(") - sum(line.count(c) for c in "}])")
    return keys


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: str | None
    decorators: str


def params(src: BicepSource) -> dict[str, Param]:
    found = {}
    for match in re.finditer(
        r"^param\s+(\w+)\s+(\w+)(?:[ \t]*=[ \t]*(.+?))?[ \t]*$", src.no_comments, re.M
    ):
        # Decorators are the lines just above, up to the previous blank line or statement.
        above = src.no_comments[: match.start()].rstrip("\n").split("\n")
        decorators = []
        for line in reversed(above):
            if not line.strip() or re.match(r"\s*(param|var|resource|module|output)\b", line):
                break
            decorators.append(line)
        found[match.group(1)] = Param(
            match.group(1), match.group(2), match.group(3), "\n".join(decorators)
        )
    return found


def outputs(src: BicepSource) -> set[str]:
    return set(re.findall(r"^output\s+(\w+)\s", src.no_comments, re.M))


@dataclass(frozen=True)
class Module:
    symbol: str
    path: str
    passed: list[str]


def modules(src: BicepSource) -> list[Module]:
    found = []
    for match in re.finditer(r"^module\s+(\w+)\s+'([^']+)'\s*=[^{]*\{", src.no_comments, re.M):
        body = _block(src.code, match.end() - 1)
        params_at = re.search(r"^\s*params\s*:\s*\{", src.code[body[0] : body[1]], re.M)
        passed = []
        if params_at:
            start = body[0] + params_at.end() - 1
            passed = _top_level_keys(src.code, _block(src.code, start))
        found.append(Module(match.group(1), match.group(2), passed))
    return found


def setting_keys(alias: str) -> list[tuple[BicepSource, str]]:
    """Every place a Bicep object literal sets ``alias``, with the line that does it."""
    pattern = re.compile(rf"(?:^|\{{)[ \t]*'?{re.escape(alias)}'?[ \t]*:[^\n]*", re.M)
    return [(src, m.group(0)) for src in bicep_sources() for m in pattern.finditer(src.no_comments)]


def settings_fields() -> dict[str, FieldInfo]:
    return {field.alias or name: field for name, field in Settings.model_fields.items()}


def is_secret(field: FieldInfo) -> bool:
    annotation = field.annotation
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def parameter_values() -> dict[str, str]:
    document = json.loads(PARAMETERS.read_text())
    return {name: str(spec["value"]) for name, spec in document["parameters"].items()}


def string_list(src: BicepSource, variable: str) -> list[str]:
    match = re.search(rf"^var\s+{variable}\s*=\s*\[(.*?)\]", src.no_comments, re.M | re.S)
    assert match, f"{src.name} declares no `var {variable} = [...]`"
    return re.findall(r"'([^']*)'", match.group(1))


# --- settings ----------------------------------------------------------------------------


def test_every_setting_the_code_reads_is_set_by_the_bicep_or_listed_as_not_for_azure() -> None:
    missing = [
        alias
        for alias in settings_fields()
        if alias not in NOT_SET_IN_AZURE and not setting_keys(alias)
    ]

    assert not missing, (
        f"shared/settings.py reads {missing}, but nothing in infra/ sets them. Add a parameter "
        "in infra/main.bicep (a Key Vault secret in infra/app/keyvault.bicep if it is a secret), "
        "map it in infra/main.parameters.json and document it in docs/deploy.md; or, if Azure "
        "must not set it, add it to NOT_SET_IN_AZURE in tests/test_infra.py with the reason."
    )


def test_the_not_for_azure_list_names_only_settings_the_code_reads_and_the_bicep_leaves_alone() -> (
    None
):
    fields = settings_fields()
    for alias, reason in NOT_SET_IN_AZURE.items():
        assert alias in fields, f"{alias} is no longer a setting: drop it from NOT_SET_IN_AZURE"
        assert not setting_keys(alias), f"{alias} is set in infra/ yet listed as not for Azure"
        assert len(reason) > 20


def test_every_smartdialog_setting_the_bicep_sets_is_one_the_code_reads() -> None:
    fields = settings_fields()
    for src in bicep_sources():
        for key in re.findall(r"(?:^|\{)[ \t]*'?(SMARTDIALOG_\w+)'?[ \t]*:", src.no_comments, re.M):
            assert key in fields, f"{src.name} sets {key}, which shared/settings.py never reads"


def test_secrets_reach_the_app_only_as_key_vault_references() -> None:
    secret_aliases = [
        alias
        for alias, field in settings_fields().items()
        if is_secret(field) and alias not in NOT_SET_IN_AZURE
    ]
    assert secret_aliases, "Settings has no secret field: is SecretStr still used?"

    for alias in secret_aliases:
        for src, line in setting_keys(alias):
            assert src.name == "app/keyvault.bicep", f"{alias} is set outside Key Vault: {line}"
            assert "'@Microsoft.KeyVault(SecretUri=${" in line, line


def test_secret_parameters_are_secure_and_have_no_default_value() -> None:
    main_params = params(source("main.bicep"))
    fields = settings_fields()
    for param_name, value in parameter_values().items():
        alias = re.fullmatch(r"\$\{(\w+)(?:=.*)?\}", value)
        if alias and alias.group(1) in fields and is_secret(fields[alias.group(1)]):
            param = main_params[param_name]
            assert "@secure()" in param.decorators, f"param {param_name} must be @secure()"
            assert param.default in (None, "''"), f"param {param_name} must not default a secret"


def test_each_smartdialog_parameter_is_optional_and_feeds_the_setting_of_its_variable() -> None:
    main = source("main.bicep")
    declared = params(main)
    fields = settings_fields()
    for param_name, value in parameter_values().items():
        alias = re.sub(r"[${}]|=.*", "", value)
        if alias not in fields:
            continue
        # Empty means "leave the setting out": shared/settings.py stays the one source of
        # defaults (a second default here would drift from it).
        assert (declared[param_name].type, declared[param_name].default) == ("string", "''"), (
            f"param {param_name} should be `string = ''`"
        )
        if not is_secret(fields[alias]):
            assert re.search(rf"\{{\s*{alias}\s*:\s*{param_name}\s*\}}", main.no_comments), (
                f"infra/main.bicep should set {{ {alias}: {param_name} }}"
            )


# --- queues and tables -------------------------------------------------------------------

#: Names in infra/ that no code uses yet, each with why it is there ahead of its code.
ANNOUNCED: dict[str, str] = {
    "smartdialog-dlr-forward": "delivery reports forwarded to a caller's DlrUrl from a queue "
    "(issue 13, the guarded client), added by a parallel branch",
    "smartdialog-dlr-forward-poison": "the host's poison queue of that queue trigger",
}

#: Literals shaped like our queue names (``smartdialog-...``) that name no queue: what they are.
NOT_QUEUES: dict[str, str] = {}

#: Calls whose first argument names a queue, a table or a blob container.
STORAGE_CALLS = {
    "queue_client": "queue",
    "ensured_queue": "queue",
    "table_client": "table",
    "ensured_table": "table",
    "get_container_client": "container",
    "container_client": "container",
}
SUFFIXES = {"_QUEUE": "queue", "_TABLE": "table", "_CONTAINER": "container"}
QUEUE_LIKE = re.compile(r"smartdialog(?:-[a-z0-9]+)+")


def code_storage_names(sources: typing.Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    """Every queue, table and blob container name the code spells out, by kind: constants named
    ``*_QUEUE``/``*_TABLE``/``*_CONTAINER``, literal first arguments of the storage helpers and
    queue triggers, and any literal that looks like one of our queue names."""
    found: dict[str, set[str]] = {"queue": set(), "table": set(), "container": set()}
    literal_queues: set[str] = set()
    for _, text in sources:
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                value = node.value
                for target in targets:
                    if not (isinstance(target, ast.Name) and isinstance(value, ast.Constant)):
                        continue
                    for suffix, kind in SUFFIXES.items():
                        if target.id.endswith(suffix) and isinstance(value.value, str):
                            found[kind].add(value.value)
            elif isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                first = node.args[0] if node.args else None
                for keyword in node.keywords:
                    if keyword.arg in ("queue_name", "table_name", "container_name"):
                        first = keyword.value
                        name = {"queue_name": "ensured_queue", "table_name": "table_client"}.get(
                            keyword.arg, "container_client"
                        )
                if name in STORAGE_CALLS and isinstance(first, ast.Constant):
                    found[STORAGE_CALLS[name]].add(str(first.value))
            elif isinstance(node, ast.Constant) and QUEUE_LIKE.fullmatch(str(node.value)):
                literal_queues.add(str(node.value))
    found["queue"] |= literal_queues - found["container"]
    return found


def app_sources() -> list[tuple[str, str]]:
    paths = [ROOT / "function_app.py", *sorted((ROOT / "shared").rglob("*.py"))]
    paths += sorted((ROOT / "functions").rglob("*.py"))
    return [(p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8")) for p in paths]


@cache
def triggered_queues() -> frozenset[str]:
    """The queues the app's functions trigger on, from the metadata the host indexes."""
    from devhost import app_functions
    from function_app import app

    return frozenset(
        binding["queueName"]
        for function in app_functions(app)
        for binding in map(json.loads, function.get_raw_bindings())
        if binding["type"] == "queueTrigger"
    )


def test_names_py_lists_every_queue_and_table_constant_it_defines() -> None:
    constants = code_storage_names([("shared/names.py", (ROOT / "shared/names.py").read_text())])

    assert constants["queue"] == set(names.QUEUES)
    assert constants["table"] == set(names.TABLES)


def test_the_name_finder_sees_a_queue_table_or_container_however_the_code_spells_it() -> None:
    snippet = (
        'PARTS_CONTAINER = "smartdialog-parts"\n'
        'SEEN_TABLE: str = "SmartDialogSeenTwice"\n'
        'ensured_queue("smartdialog-new-work", settings)\n'
        'table_client("SmartDialogAdHoc")\n'
        '@bp.queue_trigger(arg_name="m", queue_name="smartdialog-triggered")\n'
        "def f(m): ...\n"
        'TOPIC = "smartdialog-spelled-out"\n'
    )

    found = code_storage_names([("x.py", snippet)])

    assert found == {
        "queue": {"smartdialog-new-work", "smartdialog-triggered", "smartdialog-spelled-out"},
        "table": {"SmartDialogSeenTwice", "SmartDialogAdHoc"},
        "container": {"smartdialog-parts"},
    }


def test_the_bicep_creates_every_queue_the_code_uses_and_each_trigger_s_poison_queue() -> None:
    queues = string_list(source("app/storage.bicep"), "queueNames")
    code = code_storage_names(app_sources())["queue"] - set(NOT_QUEUES)
    poison = {names.poison_queue(q) for q in triggered_queues()}

    assert names.OUTBOUND_QUEUE in triggered_queues()  # the metadata was read
    missing = sorted((code | poison) - set(queues))
    assert not missing, (
        f"the code uses queues {missing} that infra/app/storage.bicep queueNames lacks: "
        "add them (the app's queue roles are scoped to each queue, so it cannot use any other); "
        "a smartdialog-... literal that is no queue goes into NOT_QUEUES with what it is"
    )
    extra = sorted(set(queues) - code - poison - set(ANNOUNCED))
    assert not extra, f"infra/app/storage.bicep creates queues no code uses: {extra}"
    assert len(set(queues)) == len(queues)
    for queue in queues:  # Azure queue names: 3-63 lower-case letters, digits, single hyphens
        assert re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]", queue), queue
        if not queue.endswith("-poison"):
            assert len(names.poison_queue(queue)) <= 63, f"{queue}-poison would be too long"


def test_the_bicep_creates_every_table_the_code_uses() -> None:
    tables = string_list(source("app/storage.bicep"), "tableNames")
    code = code_storage_names(app_sources())["table"]

    missing = sorted(code - set(tables))
    assert not missing, (
        f"the code uses tables {missing} that infra/app/storage.bicep tableNames lacks: add them "
        "(the app's table roles are scoped to each table); a name made at run time needs the "
        "role on the account instead (infra/app/rbac.bicep, docs/deploy.md)"
    )
    extra = sorted(set(tables) - code - set(ANNOUNCED))
    assert not extra, f"infra/app/storage.bicep creates tables no code uses: {extra}"
    assert len(set(tables)) == len(tables)
    for table in tables:  # Azure table names: 3-63 letters and digits, not starting with a digit
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", table), table


def test_the_bicep_creates_every_blob_container_the_code_names() -> None:
    storage = source("app/storage.bicep").raw
    for container in sorted(code_storage_names(app_sources())["container"]):
        assert f"'{container}'" in storage, f"infra/app/storage.bicep lacks container {container}"


def test_announced_names_are_ones_the_bicep_creates() -> None:
    declared = set(string_list(source("app/storage.bicep"), "queueNames"))
    declared |= set(string_list(source("app/storage.bicep"), "tableNames"))
    assert set(ANNOUNCED) <= declared


def test_queue_and_table_roles_are_granted_per_queue_and_per_table_never_on_the_account() -> None:
    rbac = source("app/rbac.bicep").no_comments
    main = source("main.bicep").no_comments
    assignments = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r"^resource\s+(\w+)\s+'Microsoft\.Authorization/roleAssignments@[^']+'\s*=\s*"
            r"(?:\[for[^:]*:\s*)?\{[\s\S]*?^\s*scope:\s*([\w\[\]]+)",
            rbac,
            re.M,
        )
    }

    assert assignments["queueData"] == "queues[i]"
    assert assignments["tableData"] == "tables[i]"
    for role in ("storageQueueDataContributor", "storageTableDataContributor"):
        uses = re.findall(rf"roles\.{role}\b", rbac)
        assert len(uses) == 2, f"{role} is granted more than once (once per queue or table only)"
    assert "[for queueName in queueNames:" in rbac
    assert "[for tableName in tableNames:" in rbac
    assert re.search(r"queueNames:\s*storage\.outputs\.queueNames", main)
    assert re.search(r"tableNames:\s*storage\.outputs\.tableNames", main)


# --- diagnostic settings -----------------------------------------------------------------


def test_the_app_its_storage_services_and_the_vault_send_logs_to_the_workspace() -> None:
    diagnostics = source("app/diagnostics.bicep")
    main = source("main.bicep").no_comments
    settings = re.findall(
        r"^resource\s+\w+\s+'Microsoft\.Insights/diagnosticSettings@[^']+'\s*=\s*\{"
        r"[\s\S]*?^\s*scope:\s*(\w+)[\s\S]*?^\s*workspaceId:\s*workspaceId\s*$",
        diagnostics.no_comments,
        re.M,
    )
    existing = r"^resource\s+(\w+)\s+'([^'@]+)@[^']+'\s+existing"
    targets = dict(re.findall(existing, diagnostics.no_comments, re.M))

    assert sorted(targets[scope] for scope in settings) == sorted(
        [
            "Microsoft.Web/sites",
            "Microsoft.Storage/storageAccounts",
            "Microsoft.Storage/storageAccounts/blobServices",
            "Microsoft.Storage/storageAccounts/queueServices",
            "Microsoft.Storage/storageAccounts/tableServices",
            "Microsoft.KeyVault/vaults",
        ]
    )
    assert re.search(r"workspaceId:\s*monitoring\.outputs\.logAnalyticsId", main)
    for category in ("StorageWrite", "StorageDelete"):
        assert re.search(rf"'{category}'\s*enabled:\s*true", diagnostics.no_comments)


def test_queues_and_tables_are_declared_once_from_those_lists_and_nowhere_else() -> None:
    declared = {
        kind: [
            (src.name, m.group(0))
            for src in bicep_sources()
            for m in re.finditer(
                rf"'Microsoft\.Storage/storageAccounts/{kind}@[^']+'\s*=\s*[^\n]*", src.no_comments
            )
        ]
        for kind in ("queueServices/queues", "tableServices/tables")
    }

    assert [line for _, line in declared["queueServices/queues"]] == [
        "'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = "
        "[for queueName in queueNames: {"
    ]
    assert [line for _, line in declared["tableServices/tables"]] == [
        "'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = "
        "[for tableName in tableNames: {"
    ]


# --- structure (what `bicep build` would catch first) ------------------------------------


@pytest.mark.parametrize("src", bicep_sources(), ids=lambda s: s.name)
def test_bicep_brackets_balance(src: BicepSource) -> None:
    pairs = {"{": "}", "[": "]", "(": ")"}
    stack: list[tuple[str, int]] = []
    for offset, char in enumerate(src.code):
        line = src.code.count("\n", 0, offset) + 1
        if char in pairs:
            stack.append((pairs[char], line))
        elif char in pairs.values():
            assert stack, f"{src.name}:{line}: unmatched {char!r}"
            expected, opened = stack.pop()
            assert char == expected, f"{src.name}:{line}: {char!r} closes line {opened}"
    assert not stack, f"{src.name}: unclosed bracket from line {stack[-1][1]}"


@pytest.mark.parametrize("src", bicep_sources(), ids=lambda s: s.name)
def test_modules_are_local_files_given_exactly_the_params_they_declare(src: BicepSource) -> None:
    for module in modules(src):
        # Registry modules would hide their resources from the offline scan.
        assert not re.match(r"(br|ts)[:/]", module.path), f"{src.name}: {module.path}"
        target = (src.path.parent / module.path).resolve()
        assert target.is_file(), f"{src.name}: module {module.symbol} -> missing {module.path}"

        declared = params(_scan(target))
        unknown = set(module.passed) - set(declared)
        required = {p.name for p in declared.values() if p.default is None}
        assert not unknown, f"{src.name}: module {module.symbol} passes unknown {unknown}"
        assert required <= set(module.passed), (
            f"{src.name}: module {module.symbol} misses {required - set(module.passed)}"
        )


#: ARM's limit on a deployment's name (each module is a deployment).
DEPLOYMENT_NAME_MAX = 64


def _longest(template: str) -> int:
    """The most characters a Bicep string's value can have, with any value (a connection's
    name: up to NAME_MAX_LENGTH) in each interpolation; ``take(x, N)`` and ``uniqueString``
    bound theirs."""
    from shared.connections import NAME_MAX_LENGTH

    def bound(match: re.Match[str]) -> str:
        taken = re.fullmatch(r"take\(.+,\s*(\d+)\)", match.group(1))
        if taken:
            return "x" * min(int(taken.group(1)), NAME_MAX_LENGTH)
        if match.group(1).startswith("uniqueString("):
            return "x" * 13
        return "x" * NAME_MAX_LENGTH

    return len(re.sub(r"\$\{([^}]*)\}", bound, template))


@pytest.mark.parametrize("src", bicep_sources(), ids=lambda s: s.name)
def test_every_module_deployment_name_fits_arm_s_64_characters(src: BicepSource) -> None:
    """A module deployment named after a connection (up to 64 characters itself) failed the
    provision once the name passed about 32 characters."""
    for match in re.finditer(
        r"^module\s+(\w+)\s[^\n]*\{\n\s*name:\s*'([^'\n]*)'", src.no_comments, re.M
    ):
        assert _longest(match.group(2)) <= DEPLOYMENT_NAME_MAX, (
            f"{src.name}: module {match.group(1)}'s deployment name {match.group(2)!r} can be "
            f"longer than {DEPLOYMENT_NAME_MAX} characters (take() and uniqueString() bound it)"
        )
    assert _longest("secret-connection-${name}-client-secret") > DEPLOYMENT_NAME_MAX


def test_the_sender_pause_is_a_parameter_so_that_a_provision_keeps_it() -> None:
    """docs/deploy.md "Upgrading": a hand-set AzureWebJobs.OutboundSender.Disabled was removed
    by the next provision (`azd up` included) before the new code landed."""
    assert parameter_values()["pauseSender"] == "${PAUSE_SENDER}"
    declared = params(source("main.bicep"))["pauseSender"]
    assert (declared.type, declared.default) == ("string", "''")
    assert "pauseSender: pauseSender == 'true'" in source("main.bicep").no_comments
    api = source("app/api.bicep").no_comments
    assert params(source("app/api.bicep"))["pauseSender"].type == "bool"
    assert (
        "var senderSettings = pauseSender ? { 'AzureWebJobs.OutboundSender.Disabled': 'true' } : {}"
        in api
    )
    assert re.search(r"var appSettings = union\([^\n]*\bsenderSettings\b", api)
    # The setting names the function it stops.
    assert '@bp.function_name("OutboundSender")' in (ROOT / "functions" / "sender.py").read_text()
    guide = DEPLOY_DOC.read_text()
    assert "azd env set PAUSE_SENDER true" in guide
    assert "azd env set PAUSE_SENDER false" in guide


@pytest.mark.parametrize("src", bicep_sources(), ids=lambda s: s.name)
def test_module_outputs_that_are_used_exist(src: BicepSource) -> None:
    targets = {m.symbol: (src.path.parent / m.path).resolve() for m in modules(src)}
    for symbol, output in re.findall(r"\b(\w+)\.outputs\.(\w+)", src.code):
        assert symbol in targets, f"{src.name}: {symbol} is not a module"
        assert output in outputs(_scan(targets[symbol])), f"{src.name}: {symbol}.outputs.{output}"


def test_parameters_file_maps_only_declared_params_and_every_required_one() -> None:
    declared = params(source("main.bicep"))
    mapped = parameter_values()

    assert set(mapped) <= set(declared), set(mapped) - set(declared)
    required = {p.name for p in declared.values() if p.default is None}
    assert required <= set(mapped), f"azd would prompt for {required - set(mapped)}"
    for value in mapped.values():
        assert re.fullmatch(r"\$\{[A-Za-z_]\w*(?:=[^}]*)?\}", value), value


def test_outputs_give_azd_the_app_and_never_feed_back_into_parameters() -> None:
    main_outputs = outputs(source("main.bicep"))
    env_names = {re.sub(r"[${}]|=.*", "", v) for v in parameter_values().values()}

    assert {"AZURE_FUNCTION_NAME", "AZURE_FUNCTION_URL", "SERVICE_API_URI"} <= main_outputs
    # azd stores outputs in the environment; one named like a parameter's variable would
    # silently become that parameter's value on the next `azd provision`.
    assert not (main_outputs & (env_names - {"AZURE_LOCATION", "AZURE_RESOURCE_GROUP"}))


def test_azure_yaml_deploys_this_folder_as_the_python_function_service_api() -> None:
    text = (ROOT / "azure.yaml").read_text()
    service = re.search(r"^services:\n  api:\n((?:    .*\n)+)", text, re.M)

    assert service, "azure.yaml must name one service, api"
    body = service.group(1)
    for line in ("project: .", "language: python", "host: function"):
        assert f"    {line}\n" in body, line
    assert "'azd-service-name': 'api'" in source("app/api.bicep").no_comments


def test_the_azure_runtime_is_the_python_the_tests_run_on() -> None:
    runtime = re.search(
        r"runtime:\s*\{\s*name:\s*'(\w+)'\s*version:\s*'([\d.]+)'", source("app/api.bicep").raw
    )

    assert runtime, "infra/app/api.bicep declares no functionAppConfig.runtime"
    assert runtime.groups() == ("python", f"{sys.version_info[0]}.{sys.version_info[1]}")


# --- static scan -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_checkov_finds_no_failed_check_and_every_skip_is_explained_where_it_applies() -> None:
    bash = shutil.which("bash")
    assert bash, "tools/checkov.sh needs bash"
    run = subprocess.run(
        [bash, str(ROOT / "tools" / "checkov.sh"), "--output", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    if run.returncode == 3 and os.environ.get("CI") != "true":
        pytest.skip(
            "!!! CHECKOV DID NOT RUN: tools/checkov.sh could not install checkov into "
            f".venv-checkov (offline?). In CI this fails instead.\n{run.stderr[-2000:]}"
        )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov gave no JSON report (exit {run.returncode}):\n{run.stderr[-4000:]}")
    report = report[0] if isinstance(report, list) else report
    results, summary = report["results"], report["summary"]

    assert not summary["parsing_errors"], (
        f"checkov could not parse {results.get('parsing_errors')}: those resources went unscanned"
    )
    assert summary["resource_count"] > 0
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in results.get("failed_checks", [])
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)

    skipped = {
        (c["file_path"].lstrip("/"), c["check_id"]): c["check_result"].get("suppress_comment", "")
        for c in results.get("skipped_checks", [])
    }
    for (path, check_id), reason in skipped.items():
        why = f"infra/{path}: skip of {check_id} needs a reason (checkov:skip={check_id}:why)"
        assert reason != "No comment provided", why
        assert len(reason) >= 40, why
    written = {
        (src.name, check_id)
        for src in bicep_sources()
        for check_id in re.findall(r"checkov:skip=([A-Z0-9_]+)", src.raw)
    }
    assert written == set(skipped), (
        f"skip comments that excuse nothing: {sorted(written - set(skipped))}; "
        f"skips without a comment: {sorted(set(skipped) - written)}"
    )


# --- named connections ---------------------------------------------------------------------

#: Per-connection settings (README "Connections") and the JSON field of SMARTDIALOG_CONNECTIONS
#: that feeds each; secrets come from SMARTDIALOG_CONNECTION_SECRETS through Key Vault.
CONNECTION_FIELDS = {
    "CUSTOMERS": "customers",
    "CUSTOMER_ID": "customerId",
    "SERVICE_ID": "serviceId",
    "CLIENT_ID": "clientId",
    "QUOTA_CALLS": "quotaCalls",
    "QUOTA_PERIOD_SECONDS": "quotaPeriodSeconds",
    "QUOTA_SAFETY_MARGIN_SECONDS": "quotaSafetyMarginSeconds",
    "BASE_URL": "baseUrl",
    "AUTHORITY": "authority",
    "SCOPES": "scopes",
}
CONNECTION_SECRETS = {"CLIENT_SECRET": "client-secret", "REFRESH_TOKEN": "refresh-token"}
CONNECTION_PREFIX = "SMARTDIALOG_CONNECTIONS__${toUpper(replace("


def test_named_connections_come_from_azd_and_their_secrets_only_through_key_vault() -> None:
    mapped = parameter_values()
    assert mapped["smartDialogConnections"] == "${SMARTDIALOG_CONNECTIONS}"
    assert mapped["smartDialogConnectionSecrets"] == "${SMARTDIALOG_CONNECTION_SECRETS}"
    declared = params(source("main.bicep"))
    # azd puts an environment value into a string parameter unescaped (a JSON value's quotes
    # break the parameters file) but parses it as JSON for an array or object parameter.
    assert (
        declared["smartDialogConnections"].type,
        declared["smartDialogConnections"].default,
    ) == ("array", "[]")
    secrets = declared["smartDialogConnectionSecrets"]
    assert "@secure()" in secrets.decorators
    assert (secrets.type, secrets.default) == ("object", "{}")
    vault_secrets = params(source("app/keyvault.bicep"))["connectionSecrets"]
    assert "@secure()" in vault_secrets.decorators
    assert vault_secrets.type == "object"
    # The deploy guide's example values are what those parameters take.
    examples = dict(
        re.findall(r"azd env set (SMARTDIALOG_CONNECTION\w*) '([^']*)'", DEPLOY_DOC.read_text())
    )
    assert isinstance(json.loads(examples["SMARTDIALOG_CONNECTIONS"]), list)
    assert isinstance(json.loads(examples["SMARTDIALOG_CONNECTION_SECRETS"]), dict)

    main, vault = source("main.bicep").no_comments, source("app/keyvault.bicep").no_comments
    for setting, field_name in CONNECTION_FIELDS.items():
        line = re.search(
            rf"name: '{re.escape(CONNECTION_PREFIX)}connection\.name, '-', '_'\)\)}}__{setting}'\n"
            r"\s*value: ([^\n]+)",
            main,
        )
        assert line, f"infra/main.bicep sets no SMARTDIALOG_CONNECTIONS__<NAME>__{setting}"
        assert f"'{field_name}'" in line.group(1)
        assert f"connection.{field_name}" in line.group(1)
    for setting, suffix in CONNECTION_SECRETS.items():
        assert f"name: 'smartdialog-connection-${{name}}-{suffix}'" in vault
        reference = re.search(
            rf"name: '{re.escape(CONNECTION_PREFIX)}name, '-', '_'\)\)}}__{setting}'\n"
            r"\s*value: ([^\n]+)",
            vault,
        )
        assert reference, f"infra/app/keyvault.bicep gives no {setting} reference"
        assert "'@Microsoft.KeyVault(SecretUri=${" in reference.group(1)
        for src in bicep_sources():  # the secret setting is set nowhere else
            if src.name != "app/keyvault.bicep":
                assert f"__{setting}'" not in src.no_comments, src.name
    # Settings left empty are left out, and the app gets the pairs beside its other settings.
    assert "filter(flatten(connectionSettingPairs), setting => !empty(setting.value))" in main
    assert "connectionSettings: concat(connectionSettings, connectionSecretSettings)" in main
    assert "appSettings: concat(appSettingPairs, connectionSettings)" in (
        source("app/api.bicep").no_comments
    )


def test_the_deploy_guide_lists_every_queue_table_and_container_the_bicep_creates() -> None:
    guide = DEPLOY_DOC.read_text()
    storage = source("app/storage.bicep")
    created = string_list(storage, "queueNames") + string_list(storage, "tableNames")
    missing = [name for name in [*created, names.PAYLOADS_CONTAINER] if f"`{name}`" not in guide]
    assert not missing, f"docs/deploy.md's storage row lacks {missing}"


def test_the_operations_guide_names_every_poison_queue_the_keeper_keeps() -> None:
    from shared.ops import POISON_SOURCES

    guide = (ROOT / "docs" / "operations.md").read_text()
    missing = [q for q in map(names.poison_queue, POISON_SOURCES) if f"`{q}`" not in guide]
    assert not missing, f"docs/operations.md lacks {missing}"


HOOK = INFRA / "hooks" / "callback-secret.sh"


def run_hook(tmp_path: Path, *, fails: bool = False, **env: str) -> list[str]:
    """Run the preprovision hook as azd would (its environment's values set), with an ``azd``
    on PATH that records its arguments; returns the calls it got (``fails``: it must exit
    non-zero, explaining)."""
    calls = tmp_path / "calls"
    fake = tmp_path / "azd"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{calls}"\n')
    fake.chmod(0o755)
    run = subprocess.run(
        ["/bin/sh", str(HOOK)],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (run.returncode != 0) == fails, run.stderr
    assert ("SMARTDIALOG_CALLBACK_SECRETS" in run.stderr) == fails
    given = [s.strip() for s in env.get("SMARTDIALOG_CALLBACK_SECRETS", "").split(",")]
    assert not [s for s in given if s and s in run.stderr], "the hook printed a secret"
    return calls.read_text().splitlines() if calls.exists() else []


def test_no_provision_without_a_callback_secret_and_the_hook_never_makes_one_up(
    tmp_path: Path,
) -> None:
    """Without the secret, azd up deployed an app that answered 503. Making one up is no
    better: from a fresh clone a deployed environment looks new, and a new secret would break
    every URL signed with the live one. The hook stops the provision and says what to do."""
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    assert run_hook(tmp_path / "a", fails=True) == []
    assert run_hook(tmp_path / "b", fails=True, AZURE_KEY_VAULT_NAME="kv-abc") == []
    assert run_hook(tmp_path / "c", SMARTDIALOG_CALLBACK_SECRETS="mine" * 10) == []

    # The command it suggests for a new environment makes a secret the app takes.
    made = subprocess.run(
        ["/bin/sh", "-c", "head -c 36 /dev/urandom | base64 | tr '+/' '-_'"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    settings = Settings.model_validate({"SMARTDIALOG_CALLBACK_SECRETS": made})
    assert secrets_problem(settings.callback_secret_list) is None
    hooks = (ROOT / "azure.yaml").read_text()
    assert "run: ./infra/hooks/callback-secret.sh" in hooks
    assert "run: ./infra/hooks/callback-secret.ps1" in hooks
    assert (INFRA / "hooks" / "callback-secret.ps1").exists()


_M = MIN_SECRET_BYTES


@pytest.mark.parametrize(
    "secrets",
    [
        "changeme",
        "x" * (_M - 1),
        "x" * _M,
        f" {'x' * _M} , ,",
        f"{'n' * _M},tiny",
        f"{'n' * _M},{'o' * (_M - 1)},{'p' * _M}",
        "é" * (_M // 2),  # bytes, not characters
        "é" * (_M // 2 - 1) + "x",
        " , ",
    ],
)
def test_the_hook_takes_exactly_the_callback_secrets_the_app_takes(
    secrets: str, tmp_path: Path
) -> None:
    """`azd env set SMARTDIALOG_CALLBACK_SECRETS changeme` passed the hook (it only checked the
    secret was set), and `azd up` deployed an app that answered 503 everywhere: the hook applies
    the app's own rule (secrets_problem) and stops the provision, saying why."""
    given = Settings.model_validate({"SMARTDIALOG_CALLBACK_SECRETS": secrets})
    takes = secrets_problem(given.callback_secret_list) is None
    assert run_hook(tmp_path, fails=not takes, SMARTDIALOG_CALLBACK_SECRETS=secrets) == []
    windows = INFRA / "hooks" / "callback-secret.ps1"
    if pwsh := shutil.which("pwsh"):
        run = subprocess.run(
            [pwsh, "-NoProfile", "-File", str(windows)],
            env={**os.environ, "SMARTDIALOG_CALLBACK_SECRETS": secrets},
            capture_output=True,
            check=False,
        )
        assert (run.returncode == 0) == takes, run.stderr
    else:  # no PowerShell here: it at least applies the same rule
        text = windows.read_text()
        assert f"GetByteCount($secrets[$i]) -lt {_M}" in text
        assert "Split(',') | ForEach-Object { $_.Trim() } | Where-Object { $_ }" in text
