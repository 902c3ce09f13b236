"""The screen keys act whatever has focus: every focusable widget of every screen in turn.

Outside a text field, ``h m p d f`` switch screens at once (and the screen stays switched: a
widget left focused in the old one used to pull its tab back); in a text field the letter is
typed, Escape leaves the field, and the next key acts. ``ctrl+p`` opens the palette from
anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.command import CommandPalette
from textual.widgets import Input, Select, TabbedContent
from textual.widgets._select import SelectOverlay

from launcher.tui.app import LauncherApp
from tests import gpu_boxes
from tests.test_tui import services

KEYS = {"hardware": "h", "model": "m", "plan": "p", "dashboard": "d", "profiles": "f"}


async def test_screen_keys_act_from_every_focusable_widget(
    model_factory: Callable[..., Path], tmp_path: Path
) -> None:
    svc = services(gpu_boxes.four_h100_backend())
    svc.models_dir = tmp_path
    svc.model_places = lambda: []
    svc.sample_interval_s = 1.0  # the samplers' messages are not what is tested here
    app = LauncherApp(svc, model=model_factory("llama"))
    checked = 0
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.3)
        tabs = app.query_one(TabbedContent)
        for tab in KEYS:
            app.action_show(tab)
            await pilot.pause(0.1)
            # a Select's list (SelectOverlay) has focus only while the Select is open: below
            focusable = [
                w
                for w in tabs.get_pane(tab).query("*")
                if w.focusable and not isinstance(w, SelectOverlay)
            ]
            assert focusable, tab
            for i, widget in enumerate(focusable):
                target = list(KEYS)[(list(KEYS).index(tab) + 1 + i) % len(KEYS)]
                app.action_show(tab)
                widget.focus()
                await pilot.pause(0.05)
                where = f"{type(widget).__name__}#{widget.id} on {tab}"
                if isinstance(widget, Input):
                    before = widget.value
                    await pilot.press(KEYS[target])
                    assert tabs.active == tab, where  # typed, not a screen key
                    if widget.type == "text":  # number fields refuse the letter
                        assert widget.value != before, where
                    widget.value = before
                    await pilot.press("escape")
                    assert app.focused is None, where
                await pilot.press(KEYS[target])
                await pilot.pause(0.05)
                assert tabs.active == target, where
                await pilot.press("ctrl+p")
                await pilot.pause(0.05)
                assert isinstance(app.screen, CommandPalette), where
                await pilot.press("escape")
                await pilot.pause(0.05)
                checked += 1
        # an open Select: Escape closes it, and the next key acts
        app.action_show("plan")
        kv = app.query_one("#plan-kv", Select)
        kv.focus()
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert kv.expanded
        await pilot.press("escape", "d")
        await pilot.pause(0.1)
        assert not kv.expanded and tabs.active == "dashboard"
        await pilot.press("q")
        await pilot.pause(0.1)
    assert checked >= 20
    assert app.return_code == 0 or app._exit
