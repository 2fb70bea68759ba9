"""Settings: parsed once, defaults in one place, every error names the setting at fault."""

from __future__ import annotations

import datetime as dt

import pytest

from o365collector.config import Settings
from o365collector.errors import ConfigError
from o365collector.models import CONTENT_TYPES
from o365collector.tenant_config import CLOUDS

BASE = {
    "O365_TENANT_ID": "11111111-2222-4333-8444-555555555555",
    "O365_CLIENT_ID": "66666666-7777-4888-9999-AAAAAAAAAAAA",
    "O365_CLIENT_SECRET": "very-secret-value",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "SINK_TYPE": "file",
    "SINK_FILE_DIR": "/tmp/o365-out",
}


def parse(**overrides: str) -> Settings:
    env = dict(BASE)
    for key, value in overrides.items():
        if value == "<unset>":
            env.pop(key, None)
        else:
            env[key] = value
    return Settings.from_env(env)


def test_defaults_cover_all_content_types_on_the_enterprise_cloud() -> None:
    settings = parse()
    tenant = settings.tenants[0]
    assert tenant.content_types == CONTENT_TYPES
    assert "DLP.All" in tenant.content_types
    assert tenant.api_url == "https://manage.office.com"
    assert tenant.authority_host == "https://login.microsoftonline.com"
    assert tenant.token_scope == "https://manage.office.com/.default"
    assert tenant.publisher_id == tenant.tenant_id
    assert tenant.credential.client_id == BASE["O365_CLIENT_ID"].lower()
    assert settings.poison_queue == "o365-content-poison"


@pytest.mark.parametrize(
    ("cloud", "api", "login"),
    [
        ("Enterprise", "https://manage.office.com", "https://login.microsoftonline.com"),
        ("gcc", "https://manage-gcc.office.com", "https://login.microsoftonline.com"),
        ("GCCHigh", "https://manage.office365.us", "https://login.microsoftonline.us"),
        ("DoD", "https://manage.protection.apps.mil", "https://login.microsoftonline.us"),
    ],
)
def test_cloud_picks_api_host_login_host_and_scope(cloud: str, api: str, login: str) -> None:
    tenant = parse(O365_CLOUD=cloud).tenants[0]
    assert (tenant.api_url, tenant.authority_host, tenant.token_scope) == (api, login, api + "/.default")


def test_overrides_replace_hosts_but_keep_the_clouds_token_scope() -> None:
    tenant = parse(
        O365_CLOUD="GCCHigh", O365_API_URL="https://127.0.0.1:8443/", O365_AUTHORITY_HOST="https://127.0.0.1:9443"
    ).tenants[0]
    assert tenant.api_url == "https://127.0.0.1:8443"
    assert tenant.authority_host == "https://127.0.0.1:9443"
    assert tenant.token_scope == CLOUDS["GCCHigh"].api_url + "/.default"
    assert not tenant.authority_is_microsoft


def test_content_types_are_matched_case_insensitively_and_deduplicated() -> None:
    tenant = parse(O365_CONTENT_TYPES=" audit.exchange, DLP.All,Audit.Exchange ").tenants[0]
    assert tenant.content_types == ("Audit.Exchange", "DLP.All")


def test_start_time_and_publisher_id() -> None:
    tenant = parse(
        O365_START_TIME="2026-11-20T10:00:00", O365_PUBLISHER_ID="AAAAAAAA-0000-4000-8000-000000000001"
    ).tenants[0]
    assert tenant.start_time == dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC)
    assert tenant.publisher_id == "aaaaaaaa-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    ("overrides", "setting", "fragment"),
    [
        ({"O365_TENANT_ID": "<unset>"}, "O365_TENANT_ID", "required"),
        ({"O365_TENANT_ID": "contoso.onmicrosoft.com"}, "O365_TENANT_ID", "not a GUID"),
        ({"O365_CLIENT_ID": "abc"}, "O365_CLIENT_ID", "not a GUID"),
        ({"O365_CLIENT_SECRET": " "}, "O365_CLIENT_SECRET", "required"),
        ({"O365_CONTENT_TYPES": "Audit.Exchange,Audit.Foo"}, "O365_CONTENT_TYPES", "'Audit.Foo'"),
        ({"O365_CLOUD": "China"}, "O365_CLOUD", "expected one of Enterprise, GCC, GCCHigh, DoD"),
        ({"O365_API_URL": "manage.office.com"}, "O365_API_URL", "absolute URL"),
        ({"O365_AUTHORITY_HOST": "http://login.example.com"}, "O365_AUTHORITY_HOST", "https"),
        ({"O365_START_TIME": "yesterday"}, "O365_START_TIME", "ISO-8601"),
        ({"O365_WINDOW_MINUTES": "2000"}, "O365_WINDOW_MINUTES", "maximum 1440"),
        ({"O365_WINDOW_MINUTES": "six"}, "O365_WINDOW_MINUTES", "whole number"),
        ({"AzureWebJobsStorage": "<unset>"}, "AzureWebJobsStorage", "accountName"),
        ({"O365_CONTENT_QUEUE": "Bad_Queue"}, "O365_CONTENT_QUEUE", "queue name"),
        ({"O365_CONTENT_QUEUE": "événements"}, "O365_CONTENT_QUEUE", "queue name"),
        ({"O365_STATUS_TABLE": "statusé"}, "O365_STATUS_TABLE", "table name"),
        ({"O365_STATUS_TABLE": "1status"}, "O365_STATUS_TABLE", "table name"),
        ({"SINK_TYPE": "<unset>"}, "SINK_TYPE", "required"),
        ({"SINK_TYPE": "kafka"}, "SINK_TYPE", "unknown sink 'kafka'"),
    ],
)
def test_errors_name_the_setting(overrides: dict[str, str], setting: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(**overrides)
    assert caught.value.setting == setting
    assert str(caught.value).startswith(f"{setting}: ")
    assert fragment in str(caught.value)


def test_identity_based_storage_settings_are_accepted() -> None:
    settings = parse(
        AzureWebJobsStorage="<unset>",
        AzureWebJobsStorage__accountName="collectorsa",
        AzureWebJobsStorage__clientId="0000aaaa-0000-4000-8000-000000000000",
    )
    assert settings.storage.connection_string is None
    assert settings.storage.queue_service_uri == "https://collectorsa.queue.core.windows.net"
    assert settings.storage.table_service_uri == "https://collectorsa.table.core.windows.net"
    assert settings.storage.managed_identity_client_id == "0000aaaa-0000-4000-8000-000000000000"


def test_the_secret_never_shows_in_reprs() -> None:
    settings = parse()
    assert "very-secret-value" not in repr(settings)
    assert "very-secret-value" not in str(settings.tenants[0])
    assert settings.tenants[0].credential.client_secret.reveal() == "very-secret-value"
