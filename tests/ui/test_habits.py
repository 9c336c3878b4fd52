"""The server side of the page's habits (issue 17): the script's configuration in the
page head and A1111's notification.mp3. The keys themselves: test_browser_habits.py."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

from webui.ui.habits import MAX_SOUND_BYTES, habits_head, sound_uri, started_js


def test_notification_mp3_of_the_data_folder_is_played(tmp_path) -> None:
    assert sound_uri(tmp_path) is None  # none: the page beeps
    (tmp_path / "notification.mp3").write_bytes(b"ID3 sound")
    uri = sound_uri(tmp_path)
    assert uri == "data:audio/mpeg;base64," + base64.b64encode(b"ID3 sound").decode()
    (tmp_path / "notification.mp3").write_bytes(b"0" * (MAX_SOUND_BYTES + 1))
    assert sound_uri(tmp_path) is None  # too large to put into every page


def test_the_head_configures_the_script(tmp_path) -> None:
    ctx = SimpleNamespace(flags=SimpleNamespace(data_dir=tmp_path))
    head = habits_head(ctx)
    config = json.loads(head.split("window.webuiHabits = ", 1)[1].split(";</script>", 1)[0])
    assert config == {
        "tabs": ["txt2img", "img2img", "inpaint"],
        "labels": {"forever": "Generate forever", "cancel": "Cancel generate forever"},
        "sound": None,
    }
    assert 'addEventListener("keydown"' in head and head.count("<script>") == 2
    # the run event's js passes its inputs on unchanged
    assert started_js("img2img") == (
        '(...args) => { window.webuiHabits?.started?.("img2img"); return args; }'
    )
