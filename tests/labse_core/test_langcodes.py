import pytest

from labse_core.langcodes import UnknownLanguage, base_language, language_name, normalize
from tests.conftest import LOCALE_ROOT, TATOEBA


@pytest.mark.parametrize(
    "code, canon",
    [
        ("de", "de"), ("de_CH", "de"), ("pt_BR", "pt"), ("pt-BR", "pt"), ("de_DE.UTF-8", "de"),
        ("sr", "sr"), ("sr@latin", "sr-Latn"), ("sr@Latn", "sr-Latn"), ("sr@ije", "sr"), ("sr-Latn-RS", "sr-Latn"),
        ("zh_CN", "zh"), ("zh_Hans", "zh"), ("zh_TW", "zh-Hant"), ("zh_HK", "zh-Hant"), ("zh-Hant", "zh-Hant"),
        ("uz@cyrillic", "uz-Cyrl"), ("tt@iqtelif", "tt-Latn"), ("pa_PK", "pa-Arab"), ("ca@valencia", "ca"),
        ("mo", "ro"), ("no", "nb"), ("iw", "he"),
        ("deu", "de"), ("ger", "de"), ("cmn", "zh"), ("pes", "fa"), ("zsm", "ms"), ("swh", "sw"), ("lvs", "lv"),
        ("ast", "ast"), ("fil", "fil"), ("kmr", "kmr"), ("yue", "yue"), ("son", "son"), ("kzj", "kzj"), ("dtp", "dtp"),
    ],
)
def test_normalize(code, canon):
    assert normalize(code) == canon


@pytest.mark.parametrize("bad", ["xx", "qqq", "", "de@klingon", "not a code", "12"])
def test_unknown_codes_raise(bad):
    with pytest.raises(UnknownLanguage):
        normalize(bad)


def test_helpers():
    assert base_language("sr@latin") == "sr"
    assert language_name("sr@latin") == "Serbian (Latn)"
    assert language_name("deu") == "German"


def test_every_locale_on_this_machine_and_every_tatoeba_language_maps():
    locales = [p.name for p in LOCALE_ROOT.iterdir() if p.is_dir()] if LOCALE_ROOT.is_dir() else []
    for loc in locales:
        normalize(loc)
    tatoeba = {p.name.split(".")[-1] for p in TATOEBA.glob("tatoeba.*-eng.*")} - {"eng"}
    if not tatoeba:
        pytest.skip("no Tatoeba data beside the checkout")
    mapped = {normalize(t) for t in tatoeba}
    assert len(tatoeba) == 112 and len(mapped) == 112  # no two Tatoeba languages collapse into one
