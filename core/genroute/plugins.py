"""The plugin manager: loads every plugin through entry points (built-ins too), and nothing else."""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import logging
import re
from collections.abc import Iterable
from functools import lru_cache

import pluggy

from . import hookspecs
from .errors import PluginError
from .provider import Provider

log = logging.getLogger("genroute.plugins")

ENTRY_POINT_GROUP = hookspecs.PROJECT
_FAILED = object()  # what an entry point that fails to load stands for


def make_plugin_manager(*, entry_points: bool = True, plugins: Iterable[object] = ()) -> pluggy.PluginManager:
    """A fresh manager with genroute's hook specs, entry-point plugins and any ``plugins`` given."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if entry_points:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken third-party package must say who it is
            # A hook implementation the specs refuse (say, a bad signature) loaded fine: name its plugin.
            culprit = exc.plugin if isinstance(exc, pluggy.PluginValidationError) else None
            raise PluginError(
                f"{_entry_point_of(culprit)} in entry point group {ENTRY_POINT_GROUP!r} failed to load: {exc!r}"
            ) from exc
    for plugin in plugins:
        _register(pm, plugin)
    _refuse_unknown_hooks(pm)  # a misspelled hook name would otherwise be ignored in silence
    return pm


def _register(pm: pluggy.PluginManager, plugin: object) -> None:
    """Register a plugin given in code; what pluggy refuses becomes a PluginError naming it by module or class
    (pluggy names it by a number, its ``id``)."""
    try:
        pm.register(plugin)
    except pluggy.PluginValidationError as exc:
        # "Plugin '1399…' for hook 'genroute_offers'\nhookimpl definition: …\nArgument(s) {'budget'} are …"
        what = "; ".join(line.strip() for line in _PLUGGY_NAME.sub("", str(exc), count=1).splitlines() if line.strip())
        raise PluginError(
            f"plugin {_module_or_class(plugin)} has a bad hook implementation {what}",
            hint="give the hook only arguments its specification in genroute.hookspecs names, or do not register "
            "the plugin",
        ) from exc
    except ValueError as exc:  # already registered: twice in ``plugins``, or also installed through an entry point
        name = pm.get_name(plugin)
        how = f"its entry point {name!r} loads it too" if name in _entry_point_names(pm) else "it is given twice"
        raise PluginError(
            f"plugin {describe_plugin(pm, plugin)} is registered twice: {how}",
            hint="register each plugin once: leave out of plugins=[...] what entry points load, or pass "
            "entry_points=False to make_plugin_manager",
        ) from exc


_PLUGGY_NAME = re.compile(r"^Plugin '[^']*' ")


def _entry_point_names(pm: pluggy.PluginManager) -> set[str]:
    """The names the plugins loaded through entry points are registered under (their entry point's name)."""
    return {pm.get_name(plugin) or "" for plugin, _dist in pm.list_plugin_distinfo()}


def _refuse_unknown_hooks(pm: pluggy.PluginManager) -> None:
    """Raise PluginError for the first plugin implementing hooks genroute does not define, naming each with the
    closest hook genroute does define (what :meth:`pluggy.PluginManager.check_pending` checks, said usefully)."""
    unknown: dict[int, tuple[object, list[str]]] = {}
    for name, caller in vars(pm.hook).items():
        if name.startswith("_") or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if not impl.optionalhook:
                unknown.setdefault(id(impl.plugin), (impl.plugin, []))[1].append(name)
    if not unknown:
        return
    plugin, names = next(iter(unknown.values()))
    who = _entry_point_of(plugin)
    if who == "a plugin":  # registered in code, not through an entry point
        who = describe_plugin(pm, plugin)
    known = sorted(name for name, caller in vars(pm.hook).items() if not name.startswith("_") and caller.has_spec())
    guesses = {name: difflib.get_close_matches(name, known, n=1) for name in names}
    quoted = ", ".join(repr(name) for name in names)
    what = f"an unknown hook {quoted}" if len(names) == 1 else f"unknown hooks {quoted}"
    it = "it" if len(names) == 1 else "them"
    if len(names) == 1 and guesses[names[0]]:
        hint = f"did you mean {guesses[names[0]][0]}? Rename it in the plugin, or uninstall the plugin"
    elif any(guesses.values()):
        meant = ", ".join(f"{guess[0]} for {name}" for name, guess in guesses.items() if guess)
        hint = f"did you mean {meant}? Rename {it} in the plugin, or uninstall the plugin"
    else:
        hint = f"genroute's hooks are {', '.join(known)}: rename {it} in the plugin, or uninstall the plugin"
    raise PluginError(f"{who} implements {what}", hint=hint)


def _entry_point_of(plugin: object | None = None) -> str:
    """The plugin of the group that fails to load, or whose loaded object is ``plugin``: its entry point and
    distribution. Loading again is cheap for the plugins that loaded (modules are cached); ``"a plugin"``
    when none matches (say ``plugin`` was registered directly, not through an entry point)."""
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            try:
                loaded: object = ep.load()
            except Exception:
                loaded = _FAILED
            if loaded is _FAILED or (plugin is not None and loaded is plugin):
                name = dist.metadata["Name"] or "an unnamed distribution"
                return f"plugin {ep.name!r} ({ep.value}, from {name} {dist.version})"
    return "a plugin"


def describe_plugin(pm: pluggy.PluginManager, plugin: object) -> str:
    """Who a loaded plugin is, for messages: ``genroute_echo (genroute-echo 0.1.0)``, or its module or class.

    Pluggy names a plugin registered in code by a number (its ``id``), which tells the user nothing.
    """
    module = _module_or_class(plugin)
    for loaded, dist in pm.list_plugin_distinfo():
        if loaded is plugin:
            return f"{module} ({dist.project_name} {dist.version})"
    return module


def plugin_label(pm: pluggy.PluginManager, plugin: object) -> str:
    """A plugin for messages about its faults, saying what to fix or uninstall: ``plugin 'echo' (genroute_echo,
    from genroute-echo 0.1.0)`` when installed through an entry point, else ``plugin <module or module.Class>``."""
    module = _module_or_class(plugin)
    for loaded, dist in pm.list_plugin_distinfo():
        if loaded is plugin:
            return f"plugin {pm.get_name(plugin)!r} ({module}, from {dist.project_name} {dist.version})"
    return f"plugin {module}"


def async_hook_message(pm: pluggy.PluginManager, plugin: object, hook: str) -> str:
    """What to say of a plugin whose implementation of ``hook`` is an ``async def`` (pluggy never awaits it)."""
    return (
        f"{plugin_label(pm, plugin)}: {hook} is an async def (it returned a coroutine), so it did nothing; "
        "make it a plain def; fix the plugin, or uninstall it"
    )


def refuse_coroutine(answer: object) -> bool:
    """True when a hook implementation answered a coroutine (it is an ``async def``), closing it so that Python
    does not warn that it was never awaited."""
    if inspect.iscoroutine(answer):
        answer.close()
        return True
    return False


def call_each(pm: pluggy.PluginManager, hook: str, **kwargs: object) -> None:
    """Call every implementation of ``hook`` in pluggy's order, as pluggy would (what one raises propagates), but
    warn about (and close the coroutine of) one that is an ``async def``, rather than ignore it in silence."""
    for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
        if refuse_coroutine(impl.function(*[kwargs[name] for name in impl.argnames])):
            log.warning("%s", async_hook_message(pm, impl.plugin, hook))


def _module_or_class(plugin: object) -> str:
    """A module plugin by its name, an object registered in code by its class."""
    name = getattr(plugin, "__name__", None)
    return name if isinstance(name, str) else f"{type(plugin).__module__}.{type(plugin).__qualname__}"


@lru_cache(maxsize=1)
def default_plugin_manager() -> pluggy.PluginManager:
    """The process's plugin manager, created on first use (genroute's only global state)."""
    return make_plugin_manager()


def collect_providers(pm: pluggy.PluginManager) -> dict[str, Provider]:
    """Ask every plugin for its providers; names must be unique."""
    return {name: provider for name, (provider, _plugin) in collect_providers_by_plugin(pm).items()}


def collect_providers_by_plugin(pm: pluggy.PluginManager) -> dict[str, tuple[Provider, str]]:
    """Every provider with the plugin that registered it (its distribution name when installed)."""
    return {name: (provider, source) for name, (provider, source, _plugin) in collect_registrations(pm).items()}


def collect_registrations(pm: pluggy.PluginManager) -> dict[str, tuple[Provider, str, object]]:
    """Every provider with the plugin that registered it: its description and the plugin object itself."""
    providers: dict[str, tuple[Provider, str, object]] = {}
    for impl in pm.hook.genroute_register_providers.get_hookimpls():
        source = describe_plugin(pm, impl.plugin)

        def register(provider: Provider, source: str = source, plugin: object = impl.plugin) -> None:
            if not isinstance(provider, Provider):
                raise PluginError(f"{source}: register() expects a genroute.Provider, got {type(provider).__name__}")
            name = getattr(provider, "name", "")
            if not name:
                raise PluginError(f"{source}: {type(provider).__name__} has no name")
            if name in providers:
                raise PluginError(f"two plugins register a provider named {name!r} ({providers[name][1]}, {source})")
            providers[name] = (provider, source, plugin)

        try:
            answer = impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"{source}: genroute_register_providers failed: {exc!r}") from exc
        if refuse_coroutine(answer):
            log.warning("%s", async_hook_message(pm, impl.plugin, "genroute_register_providers"))
    return providers
