"""Configuration of webhooks, subscription_count, watchlist events and origins: the env names
of the single Laravel app, a TOML file for several, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reverb_py.config import ConfigError, Webhook, load_settings

APP_ENV = {"REVERB_APP_ID": "1", "REVERB_APP_KEY": "k", "REVERB_APP_SECRET": "s"}


def test_single_app_features_from_env() -> None:
    hooks = [
        {
            "url": "https://backend.example/pusher/webhooks",
            "event_types": ["channel_occupied", "member_added", "channel_occupied"],
            "headers": {"X-Tenant": "acme"},
            "filter": {"channel_name_starts_with": "private-", "channel_name_ends_with": "-eu"},
        }
    ]
    settings = load_settings(
        environ={
            **APP_ENV,
            "REVERB_APP_WEBHOOKS": json.dumps(hooks),
            "REVERB_APP_SUBSCRIPTION_COUNT": "true",
            "REVERB_APP_WATCHLIST_EVENTS": "true",
            "REVERB_APP_ALLOWED_ORIGINS": "example.com, *.example.com",
            "REVERB_APP_ALLOW_MISSING_ORIGIN": "false",
            "REVERB_WEBHOOK_DELAY": "5",
            "REVERB_WEBHOOK_BATCH_WINDOW": "0.1",
            "REVERB_WEBHOOK_TIMEOUT": "2.5",
            "REVERB_WEBHOOK_RETRY_BASE": "0.5",
            "REVERB_WEBHOOK_RETRY_FOR": "60",
            "REVERB_WEBHOOK_QUEUE_SIZE": "500",
        }
    )
    (app,) = settings.apps
    assert app.webhooks == (
        Webhook(
            url="https://backend.example/pusher/webhooks",
            event_types=("channel_occupied", "member_added"),
            headers=(("X-Tenant", "acme"),),
            channel_prefix="private-",
            channel_suffix="-eu",
        ),
    )
    assert app.subscription_count and app.watchlist_events
    assert app.allowed_origins == ("example.com", "*.example.com")
    assert not app.allow_missing_origin
    assert (
        settings.webhook_delay,
        settings.webhook_batch_window,
        settings.webhook_timeout,
        settings.webhook_retry_base,
        settings.webhook_retry_for,
        settings.webhook_queue_size,
    ) == (5.0, 0.1, 2.5, 0.5, 60.0, 500)
    assert "backend.example" not in repr(app.webhooks[0])  # URLs may carry tokens


def test_defaults() -> None:
    settings = load_settings(environ=APP_ENV)
    (app,) = settings.apps
    assert (app.webhooks, app.subscription_count, app.watchlist_events) == ((), False, False)
    assert (app.allowed_origins, app.allow_missing_origin) == (("*",), True)
    assert (settings.webhook_delay, settings.webhook_retry_for) == (3.0, 300.0)


def test_several_apps_with_webhooks_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "reverb.toml"
    config.write_text(
        "[server]\nwebhook_delay = 1.5\n"
        '[[apps]]\nid = "1"\nkey = "k1"\nsecret = "s1"\nsubscription_count = true\n'
        '[[apps.webhooks]]\nurl = "https://one.example/hooks"\n'
        'event_types = ["client_event"]\n'
        '[[apps]]\nid = "2"\nkey = "k2"\nsecret = "s2"\nwatchlist_events = true\n'
    )
    settings = load_settings(environ={}, config_file=str(config))
    one, two = settings.apps
    assert settings.webhook_delay == 1.5
    assert one.webhooks == (Webhook("https://one.example/hooks", ("client_event",)),)
    assert one.subscription_count and not two.subscription_count
    assert two.watchlist_events and two.webhooks == ()


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        ([{"url": "https://x.example"}], "event_types: list one or more of"),
        ([{"url": "https://x.example", "event_types": ["channel_ocupied"]}], "channel_ocupied"),
        ([{"url": "ftp://x.example", "event_types": ["cache_miss"]}], "http:// or https://"),
        ([{"url": "https://x.example", "event_types": ["cache_miss"], "filter": []}], "filter"),
    ],
)
def test_invalid_webhooks_name_the_problem(hooks: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={**APP_ENV, "REVERB_APP_WEBHOOKS": json.dumps(hooks)})


def test_negative_webhook_delay_is_refused() -> None:
    with pytest.raises(ConfigError, match="REVERB_WEBHOOK_DELAY"):
        load_settings(environ={**APP_ENV, "REVERB_WEBHOOK_DELAY": "-1"})
