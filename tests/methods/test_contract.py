"""The method contract, checked over the whole registry with a tiny backbone on CPU."""
import pytest
import torch

from selfsup.data.augment import ViewMaker
from selfsup.methods import METHODS, create_method
from selfsup.models.backbones import create_backbone

SIZE = 32


# A ViT with 8-px patches (16 tokens) for the methods that need patch tokens (Method.needs_vit)
TINY_VIT = dict(img_size=SIZE, patch_size=8, depth=1, embed_dim=32, num_heads=2)


def build(name: str):
    torch.manual_seed(0)
    cls = METHODS.get(name)
    if cls.needs_vit:
        return create_method(name, create_backbone("vit_tiny_patch16_224", **TINY_VIT), image_size=SIZE,
                             num_classes=4, **cls.tiny)
    backbone = create_backbone("test_resnet", small_stem=True)
    return create_method(name, backbone, image_size=SIZE, num_classes=4)


def one_step(method, batch: int = 8):
    images = torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8)
    views = ViewMaker(method.views, mean=(0.5,) * 3, std=(0.25,) * 3)(images, torch.Generator().manual_seed(0))
    labels = torch.randint(0, 4, (batch,))
    schedules = method.schedules(total_steps=10, steps_per_epoch=5)
    values = {"lr": 0.1, "weight_decay": 0.0, **{k: float(v[0]) for k, v in schedules.items()}}
    out = method(views, labels, values)
    return out, values


@pytest.mark.parametrize("name", METHODS.names())
def test_loss_is_a_finite_scalar_and_gradients_reach_only_trainable_parameters(name):
    method = build(name).train()
    out, values = one_step(method)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    method.on_after_backward(values)
    trainable = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    frozen = [(n, p) for n, p in method.named_parameters() if not p.requires_grad]
    assert trainable, "a method must train something"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable)
    assert all(p.grad is None for _, p in frozen), "gradients reached a teacher / key encoder"
    encoder_params = {id(p) for p in method.encoder.parameters()}
    assert encoder_params and encoder_params <= {id(p) for p in method.parameters()}


@pytest.mark.parametrize("name", METHODS.names())
def test_state_survives_a_checkpoint_round_trip(name, tmp_path):
    method = build(name).train()
    out, values = one_step(method)
    out["loss"].backward()
    method.on_step_end(values)
    torch.save(method.state_dict(), tmp_path / "state.pt")
    restored = build(name)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for (key, a), b in zip(method.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("name", METHODS.names())
def test_encoder_maps_images_to_features(name):
    method = build(name).eval()
    features = method.encoder(torch.rand(2, 3, SIZE, SIZE))
    assert features.shape == (2, method.encoder.num_features)
