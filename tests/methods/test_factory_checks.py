"""``create_method`` checks its options as strictly as a recipe is checked (issue 16, point 7)."""
import pytest

from selfsup.config import load_config
from selfsup.core.errors import ConfigError
from selfsup.methods import METHODS, create_method
from selfsup.methods.simclr import SimCLRConfig
from selfsup.models.backbones import create_backbone


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("test_resnet", small_stem=True)


@pytest.mark.parametrize("options, culprit", [
    ({"temperature": -1}, "method.temperature"),
    ({"temperature": 0}, "method.temperature"),
    ({"temperature": float("nan")}, "method.temperature"),
    ({"proj_dim": -3}, "method.proj_dim"),
    ({"crop_scale": (0.9, 0.1)}, "method.crop_scale"),
    ({"temperature": "warm"}, "method.temperature"),
])
def test_bad_values_raise_the_same_one_line_error_as_a_recipe(backbone, options, culprit):
    with pytest.raises(ConfigError) as api:
        create_method("simclr", backbone, image_size=16, **options)
    key, value = next(iter(options.items()))
    with pytest.raises(ConfigError) as cli:
        load_config("simclr-digits", [f"method.{key}={list(value) if isinstance(value, tuple) else value}"])
    assert culprit in str(api.value) and "\n" not in str(api.value)
    assert str(api.value) == str(cli.value)


def test_a_config_object_with_bad_values_is_refused_too(backbone):
    with pytest.raises(ConfigError, match="method.temperature"):
        create_method(SimCLRConfig(temperature=-1.0), backbone, image_size=16)


def test_a_mistyped_option_names_the_closest_one(backbone):
    with pytest.raises(ConfigError) as err:
        create_method("simclr", backbone, image_size=16, temprature=0.2)
    assert str(err.value) == "unknown option 'temprature' for simclr; did you mean 'temperature'?"
    with pytest.raises(ConfigError, match=r"unknown option 'zzz' for simclr; options: .*temperature"):
        create_method("simclr", backbone, image_size=16, zzz=1)


def test_good_options_are_typed_as_a_recipe_types_them(backbone):
    method = create_method("simclr", backbone, image_size=16, temperature=1, proj_dim=8, proj_hidden_dim=8)
    assert method.cfg.temperature == 1.0 and isinstance(method.cfg.temperature, float)
    assert method.cfg.name == "simclr"


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_builds_from_its_tiny_options(backbone, name):
    if METHODS.get(name).needs_vit:  # MAE, iBOT, I-JEPA: a one-block ViT with 4-px patches
        backbone = create_backbone("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2)
    method = create_method(name, backbone, image_size=16, num_classes=4, **METHODS.get(name).tiny)
    assert method.cfg.name == name


def test_a_part_of_the_image_larger_than_the_image_is_refused_as_training_refuses_it(backbone):
    with pytest.raises(ConfigError, match=r"^method.local_crop_size=20 is larger than the 16x16 images"):
        create_method("dino", backbone, image_size=16, local_crop_size=20)
