"""A third-party provider package, installed only as files on sys.path, plugs in through entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from conftest import REPO_ROOT, FakePlugin, FakeProvider, mock_section, section
from genroute import hookimpl
from genroute.errors import ConfigError, NoRouteAvailable, PluginError
from genroute.plugins import collect_providers, make_plugin_manager
from genroute.router import Router
from genroute.types import TextGeneration

ECHO_PACKAGE = '''\
"""genroute-echo: a provider that says the prompt back (a stranger's plugin)."""

from genroute import hookimpl
from genroute.provider import Provider, catalogue_offers
from genroute.types import ProviderOutput, Usage


class EchoProvider(Provider):
    name = "echo"

    async def run(self, request, offer, ctx):
        return ProviderOutput(text=f"echo: {request.prompt}", usage=Usage(outputs=1), job_id=f"echo-{ctx.attempt}")


@hookimpl
def genroute_register_providers(register):
    register(EchoProvider())


@hookimpl
def genroute_offers(request, settings):
    if request.task_name != "text-generation":
        return []
    return catalogue_offers("echo", request, settings)
'''

PYPROJECT = """\
[project]
name = "genroute-echo"
version = "0.1.0"
dependencies = ["genroute"]

[project.entry-points.genroute]
echo = "genroute_echo"
"""


def install_dist(site: Path, dist: str, entry_points: str, version: str = "0.1.0") -> None:
    """Write the ``*.dist-info`` an installer would: METADATA and entry_points.txt."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(entry_points, encoding="utf-8")
    (info / "RECORD").write_text("", encoding="utf-8")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A site directory on sys.path; modules imported from it are forgotten afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    before = set(sys.modules)
    yield site
    for name in set(sys.modules) - before:
        if name.startswith("genroute_echo") or name.startswith("genroute_broken"):
            del sys.modules[name]


@pytest.fixture
def echo_installed(site: Path) -> Path:
    package = site / "genroute_echo"
    package.mkdir()
    (package / "__init__.py").write_text(ECHO_PACKAGE, encoding="utf-8")
    (package / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    install_dist(site, "genroute-echo", "[genroute]\necho = genroute_echo\n")
    return site


def echo_section() -> dict[str, object]:
    return section("echo", {"fast": "0", "balanced": "0"}, task="text-generation", unit="request")


def test_entry_points_load_the_third_party_plugin_beside_the_mock(echo_installed):
    pm = make_plugin_manager(entry_points=True)

    providers = collect_providers(pm)

    assert {"mock", "echo"} <= set(providers)
    assert type(providers["echo"]).__module__ == "genroute_echo"
    assert pm.get_plugin("echo") is sys.modules["genroute_echo"]


def test_without_entry_points_neither_plugin_is_loaded(echo_installed):
    assert collect_providers(make_plugin_manager(entry_points=False)) == {}


@pytest.mark.parametrize("how", ["profile", "pin"])
async def test_requests_route_to_the_third_party_provider(how, echo_installed, settings_factory, router_factory):
    providers = {"mock": mock_section(), "echo": echo_section()}
    profiles = {"echo-only": ["echo"]} if how == "profile" else {"both": ["mock", "echo"]}
    router = router_factory(settings_factory(providers, profiles=profiles), entry_points=True)
    request = TextGeneration(prompt="hello there", tier="fast", provider="echo" if how == "pin" else None)

    result = await router.arun(request)

    assert (result.provider, result.model, result.text) == ("echo", "echo/fast", "echo: hello there")
    assert result.job_id == "echo-1"
    assert [(e.provider, e.status) for e in router.ledger.entries()] == [("echo", "settled")]
    assert (await router.arun(request)).cached is True


async def test_the_mock_still_serves_what_the_plugin_does_not(echo_installed, settings_factory, router_factory):
    providers = {"mock": mock_section(), "echo": echo_section()}
    router = router_factory(settings_factory(providers, profiles={"both": ["echo", "mock"]}), entry_points=True)

    result = await router.arun({"task": "text-to-image", "prompt": "a fox", "tier": "fast", "width": 64, "height": 64})

    assert result.provider == "mock"
    plan = await router.aplan({"task": "text-to-image", "prompt": "a fox"})
    assert ("echo", "makes no offer for text-to-image") in {(r.provider, r.reason) for r in plan.rejections}


async def test_a_profile_naming_an_uninstalled_plugin_says_so(settings_factory, router_factory):
    router = router_factory(settings_factory({"echo": echo_section()}, profiles={"p": ["echo"]}), entry_points=True)

    with pytest.raises(NoRouteAvailable) as info:
        await router.arun(TextGeneration(prompt="hi"))

    assert "echo · - [balanced]: not installed (no plugin registers it)" in str(info.value)


def test_a_broken_plugin_package_raises_plugin_error(site):
    install_dist(site, "genroute-broken", "[genroute]\nbroken = genroute_broken_missing.plugin\n")

    with pytest.raises(PluginError) as info:
        make_plugin_manager(entry_points=True)

    assert "genroute_broken_missing" in str(info.value)


def test_a_plugin_that_raises_on_import_is_named_with_its_distribution(site):
    (site / "genroute_broken_boom.py").write_text("raise RuntimeError('boom at import')\n", encoding="utf-8")
    install_dist(site, "genroute-broken", "[genroute]\nboom = genroute_broken_boom\n", version="2.1")

    with pytest.raises(PluginError) as info:
        make_plugin_manager(entry_points=True)

    # Which package to fix or uninstall, not only what it raised.
    assert "plugin 'boom' (genroute_broken_boom, from genroute-broken 2.1)" in str(info.value)
    assert "boom at import" in str(info.value)


def test_a_plugin_with_a_bad_hook_signature_raises_plugin_error(site):
    package = site / "genroute_broken"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """\
            from genroute import hookimpl

            @hookimpl
            def genroute_offers(request, settings, budget):
                return []
            """
        ),
        encoding="utf-8",
    )
    install_dist(site, "genroute-broken", "[genroute]\nbroken = genroute_broken\n")

    with pytest.raises(PluginError, match="budget") as info:
        make_plugin_manager(entry_points=True)

    assert "plugin 'broken' (genroute_broken, from genroute-broken 0.1.0)" in str(info.value)


def test_a_plugin_implementing_an_unknown_hook_is_named_with_its_distribution(site):
    (site / "genroute_broken_typo.py").write_text(
        "from genroute import hookimpl\n\n@hookimpl\ndef genroute_offer(request, settings):\n    return []\n",
        encoding="utf-8",
    )
    install_dist(site, "genroute-broken", "[genroute]\ntypo = genroute_broken_typo\n", version="1.2")

    with pytest.raises(PluginError) as info:
        make_plugin_manager(entry_points=True)

    # As docs/plugins.md says: the entry point, its module and the distribution to fix or uninstall, once,
    # and the hook the author meant.
    assert info.value.message == (
        "plugin 'typo' (genroute_broken_typo, from genroute-broken 1.2) implements an unknown hook 'genroute_offer'"
    )
    assert info.value.hint == "did you mean genroute_offers? Rename it in the plugin, or uninstall the plugin"
    assert str(info.value).count("unknown hook") == 1 and str(info.value).count("genroute_broken_typo") == 1
    assert info.value.exit_code == 11


class _Misspelt:
    @hookimpl
    def genroute_chose(self, request, offers):
        return None

    @hookimpl
    def genroute_request_finishd(self, request, key, result, error):
        return None


class _Unrelated:
    @hookimpl
    def pytest_configure(self, config):
        return None


class _OptionalHook:
    @hookimpl(optionalhook=True)
    def genroute_some_future_hook(self):
        return None


def test_each_misspelt_hook_of_a_plugin_registered_in_code_is_named_with_the_hook_meant():
    with pytest.raises(PluginError) as info:
        make_plugin_manager(entry_points=False, plugins=[_Misspelt()])

    assert info.value.message == (
        f"{__name__}._Misspelt implements unknown hooks 'genroute_chose', 'genroute_request_finishd'"
    )
    assert info.value.hint == (
        "did you mean genroute_choose for genroute_chose, genroute_request_finished for genroute_request_finishd? "
        "Rename them in the plugin, or uninstall the plugin"
    )


def test_an_unknown_hook_like_no_genroute_hook_lists_the_hooks_there_are():
    with pytest.raises(PluginError) as info:
        make_plugin_manager(entry_points=False, plugins=[_Unrelated()])

    assert "implements an unknown hook 'pytest_configure'" in info.value.message
    assert "did you mean" not in info.value.hint
    assert info.value.hint.startswith("genroute's hooks are genroute_budget_limits, genroute_budget_warning,")
    assert "genroute_offers" in info.value.hint


def test_an_optional_hook_genroute_does_not_define_is_allowed():
    pm = make_plugin_manager(entry_points=False, plugins=[_OptionalHook()])
    assert pm.is_registered(next(p for p in pm.get_plugins() if isinstance(p, _OptionalHook)))


class _RegistersTwice:
    def __init__(self, *objects: object) -> None:
        self.objects = objects

    @hookimpl
    def genroute_register_providers(self, register):
        for obj in self.objects:
            register(obj)


def test_a_duplicate_provider_name_raises_plugin_error(settings_factory):
    impostor = FakeProvider("mock")
    pm = make_plugin_manager(entry_points=True, plugins=[FakePlugin(impostor)])

    with pytest.raises(PluginError, match="two plugins register a provider named 'mock'") as info:
        Router(settings_factory({"mock": mock_section()}), plugin_manager=pm)
    # both named: the built-in by module and distribution, the one registered in code by its class
    assert f"(genroute_mock.plugin (genroute 0.1.0), {FakePlugin.__module__}.FakePlugin)" in str(info.value)


def test_a_duplicate_name_within_one_plugin_raises_plugin_error():
    pm = make_plugin_manager(entry_points=False, plugins=[_RegistersTwice(FakeProvider("x"), FakeProvider("x"))])
    with pytest.raises(PluginError, match="'x'"):
        collect_providers(pm)


@pytest.mark.parametrize("thing", [object(), "mock", FakeProvider], ids=["object", "string", "class"])
def test_registering_a_non_provider_raises_plugin_error(thing, settings_factory):
    pm = make_plugin_manager(entry_points=False, plugins=[_RegistersTwice(thing)])

    with pytest.raises(PluginError, match=r"expects a genroute\.Provider"):
        Router(settings_factory(), plugin_manager=pm)


def test_a_provider_without_a_name_raises_plugin_error():
    nameless = FakeProvider("")
    pm = make_plugin_manager(entry_points=False, plugins=[_RegistersTwice(nameless)])
    with pytest.raises(PluginError, match="has no name"):
        collect_providers(pm)


LAB_PACKAGE = '''\
"""genroute-broken: a provider whose offers raise (a stranger's bug)."""

from genroute import hookimpl
from genroute.provider import Provider
from genroute.types import ProviderOutput


class LabProvider(Provider):
    name = "lab"

    async def run(self, request, offer, ctx):
        return ProviderOutput(text="never")


@hookimpl
def genroute_register_providers(register):
    register(LabProvider())


@hookimpl
def genroute_offers(request, settings):
    return {}[request.task_name]
'''


async def test_an_installed_plugin_whose_offers_raise_is_named_by_entry_point_and_the_mock_serves(
    site, settings_factory, router_factory, caplog, monkeypatch
):
    (site / "genroute_broken_lab.py").write_text(LAB_PACKAGE, encoding="utf-8")
    install_dist(site, "genroute-broken", "[genroute]\nlab = genroute_broken_lab\n")
    providers = {"lab": section("lab", "0", task="text-generation", unit="request"), "mock": mock_section()}
    router = router_factory(settings_factory(providers, profiles={"p": ["lab", "mock"]}), entry_points=True)

    with caplog.at_level("WARNING", logger="genroute.router"):
        result = await router.arun(TextGeneration(prompt="hello", tier="fast"))
        plan = await router.aplan(TextGeneration(prompt="hello", tier="fast"))

    assert result.provider == "mock"
    reason = (
        "plugin 'lab' (genroute_broken_lab, from genroute-broken 0.1.0) failed in genroute_offers: "
        "KeyError: 'text-generation'; fix the plugin, or uninstall it"
    )
    assert [r.reason for r in plan.rejections if r.provider == "lab"] == [reason]
    assert reason in caplog.text
    assert router.ledger.open_reservations() == []


BAD_OPTIONS_PACKAGE = """\
import dataclasses

from genroute import hookimpl
from genroute.provider import Provider
from genroute.types import ProviderOutput


@dataclasses.dataclass
class Options:
    colour: str = "red"


class LabProvider(Provider):
    name = "lab"
    options_model = Options

    async def run(self, request, offer, ctx):
        return ProviderOutput(text="never")


@hookimpl
def genroute_register_providers(register):
    register(LabProvider())
"""


def test_genroute_providers_lists_a_provider_with_a_broken_options_model_as_unavailable(site, tmp_path):
    (site / "genroute_broken_opts.py").write_text(BAD_OPTIONS_PACKAGE, encoding="utf-8")
    install_dist(site, "genroute-broken", "[genroute]\nlab = genroute_broken_opts\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "GENROUTE_CONFIG": str(REPO_ROOT / "plugins.toml"),
        "GENROUTE_HOME": str(tmp_path / "home"),
        "NO_COLOR": "1",
    }
    env.pop("GENROUTE_PROFILE", None)

    proc = subprocess.run(
        [sys.executable, "-m", "genroute.cli", "providers"], env=env, capture_output=True, text=True, timeout=120
    )

    assert proc.returncode == 0, proc.stderr
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("lab ")]
    assert "unavailable: its options could not be checked: options_model is class Options, not a pydantic" in line
    assert "genroute_broken_opts (genroute-broken 0.1.0)" in line
    assert "mock — " in proc.stdout


def test_bad_options_of_a_plugins_provider_are_a_config_error_naming_the_plugin(settings_factory):
    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        colour: str = "red"

    class Lab(FakeProvider):
        options_model = Options

    settings = settings_factory({"lab": {**section("lab"), "options": {"color": "blue"}}})
    pm = make_plugin_manager(entry_points=False, plugins=[FakePlugin(Lab("lab"))])

    with pytest.raises(ConfigError) as info:
        Router(settings, plugin_manager=pm)

    assert "providers.lab.options.color" in info.value.message
    assert "(provider lab comes from plugin conftest.FakePlugin)" in info.value.hint


IDLE_PACKAGE = """\
from genroute import hookimpl


@hookimpl
async def genroute_register_providers(register):  # wrongly async: registers nothing
    pass
"""


def test_genroute_providers_names_the_loaded_plugin_that_registered_nothing(site, tmp_path):
    (site / "genroute_broken_idle.py").write_text(IDLE_PACKAGE, encoding="utf-8")
    install_dist(site, "genroute-broken", "[genroute]\nidle = genroute_broken_idle\n")
    config = tmp_path / "plugins.toml"
    config.write_text(
        (REPO_ROOT / "plugins.toml").read_text(encoding="utf-8")
        + '\n[providers.idle.models.text-generation.fast]\nmodel = "idle/one"\nunit = "request"\nprice = "0"\n',
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "GENROUTE_CONFIG": str(config),
        "GENROUTE_HOME": str(tmp_path / "home"),
        "NO_COLOR": "1",
        "COLUMNS": "400",
    }
    env.pop("GENROUTE_PROFILE", None)

    proc = subprocess.run(
        [sys.executable, "-m", "genroute.cli", "providers"], env=env, capture_output=True, text=True, timeout=120
    )

    assert proc.returncode == 0, proc.stderr
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("idle ")]
    assert line.startswith(
        "idle — no installed plugin registers a provider named 'idle' (plugin 'idle' (genroute_broken_idle, from "
        "genroute-broken 0.1.0) is loaded but registered no provider)"
    )
    assert "not installed" not in proc.stdout
