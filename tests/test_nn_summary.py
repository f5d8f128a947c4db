"""Model summary: every figure of the classic two-block CNN equals the hand computation, and
receptive fields of strided/dilated convolutions equal the textbook recurrence."""

from __future__ import annotations

import pytest

from tensorc import nn


def classic_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 512), nn.ReLU(), nn.Linear(512, 10))


# Hand computation for a 1x28x28 input, batch 1.
# Shapes: conv 5x5 valid: 28-5+1 = 24; pool 2/2: 24/2 = 12; conv: 12-5+1 = 8; pool: 8/2 = 4;
# flatten: 32*4*4 = 512.
SHAPES = [(16, 24, 24), (16, 24, 24), (16, 12, 12), (32, 8, 8), (32, 8, 8), (32, 4, 4),
          (512,), (512,), (512,), (10,)]
# Parameters: weights out*in*k*k plus one bias per output.
CONV1 = 16 * 1 * 5 * 5 + 16          # 416
CONV2 = 32 * 16 * 5 * 5 + 32         # 12832
FC1 = 512 * (32 * 4 * 4) + 512       # 262656
FC2 = 10 * 512 + 10                  # 5130
PARAMS = [CONV1, 0, 0, CONV2, 0, 0, 0, FC1, 0, FC2]
# FLOPs (the plan's convention): a multiply-add is 2; a bias add, a relu, a compared window
# element is 1 each.
FLOPS = [
    2 * (16 * 24 * 24) * (1 * 5 * 5) + 16 * 24 * 24,   # conv1: 460800 + bias 9216 = 470016
    16 * 24 * 24,                                      # relu: 9216
    16 * 12 * 12 * (2 * 2),                            # max over 2x2 windows: 9216
    2 * (32 * 8 * 8) * (16 * 5 * 5) + 32 * 8 * 8,      # conv2: 1638400 + 2048 = 1640448
    32 * 8 * 8,                                        # relu: 2048
    32 * 4 * 4 * (2 * 2),                              # pool: 2048
    0,                                                 # flatten: a reshape
    2 * 512 * 512 + 512,                               # fc1: 524800
    512,                                               # relu: 512
    2 * 10 * 512 + 10,                                 # fc2: 10250
]
# Receptive field r and jump j: r_out = r_in + (k-1)*j_in, j_out = j_in*stride; start r=1, j=1.
# conv1 k5 s1: r = 1 + 4*1 = 5, j = 1
# pool  k2 s2: r = 5 + 1*1 = 6, j = 2
# conv2 k5 s1: r = 6 + 4*2 = 14, j = 2
# pool  k2 s2: r = 14 + 1*2 = 16, j = 4
RF = [5, 5, 6, 14, 14, 16, None, None, None, None]
JUMP = [1, 1, 2, 2, 2, 4, None, None, None, None]


def test_classic_cnn_every_figure_matches_the_hand_computation():
    assert FLOPS[0] == 470016 and FLOPS[3] == 1640448 and FLOPS[7] == 524800
    assert (CONV1, CONV2, FC1, FC2) == (416, 12832, 262656, 5130)
    result = nn.summarize(classic_cnn(), (1, 28, 28))
    assert [layer.kind for layer in result.layers] == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear",
        "ReLU", "Linear"]
    assert [layer.output_shape for layer in result.layers] == SHAPES
    assert [layer.params for layer in result.layers] == PARAMS
    assert [layer.flops for layer in result.layers] == FLOPS
    for layer, rf, jump in zip(result.layers, RF, JUMP):
        if rf is None:
            assert layer.receptive_field is None and layer.jump is None
        else:
            assert layer.receptive_field == (rf, rf) and layer.jump == (jump, jump)
    # the layers' own windows and strides, read from the index maps
    assert result["0"].window == (5, 5) and result["0"].stride == (1, 1)
    assert result["2"].window == (2, 2) and result["2"].stride == (2, 2)
    assert result.total_params == 416 + 12832 + 262656 + 5130 == 281034
    assert result.total_flops == sum(FLOPS)


def test_summary_table_text_and_batch_handling(capsys):
    model = classic_cnn()
    text = model.summary((1, 28, 28))
    assert capsys.readouterr().out == ""
    assert "a multiply-add counts 2" in text
    for figure in ["[16, 24, 24]", "[32, 4, 4]", "416", "12,832", "262,656", "5,130",
                   "470,016", "1,640,448", "16x16", "4x4", "Total parameters: 281,034"]:
        assert figure in text
    assert model.summary((1, 28, 28), show=True) == text
    assert capsys.readouterr().out.strip() == text.strip()
    # the batch given inside input_shape, or as batch_size: FLOPs scale, the rest does not
    assert model.summary((1, 1, 28, 28), batch_size=None) == text
    batched = nn.summarize(model, (1, 28, 28), batch_size=3)
    assert [layer.flops for layer in batched.layers] == [3 * f for f in FLOPS]
    assert [layer.output_shape for layer in batched.layers] == SHAPES


def test_summary_leaves_training_mode_alone():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(0.5), nn.ReLU())
    model.summary((1, 8, 8))
    assert all(m.training for m in model.modules())
    model.eval()
    model.summary((1, 8, 8))
    assert not any(m.training for m in model.modules())


def _formula(layers, size):
    """The textbook recurrence along one dimension: (kernel, stride, dilation, pad) per layer."""
    rf, jump, out = 1, 1, size
    rows = []
    for k, s, d, p in layers:
        rf, jump = rf + (k - 1) * d * jump, jump * s
        out = (out + 2 * p - d * (k - 1) - 1) // s + 1
        rows.append((out, rf, jump))
    return rows


def test_strided_dilated_convolutions_match_the_formula():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, dilation=2, padding=2),        # k3 s2 d2 p2 both dims
        nn.Conv2d(8, 8, (3, 5), stride=(1, 2), dilation=(3, 1)),    # per-dimension values
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 4, 1))
    result = nn.summarize(model, (3, 41, 37))
    h = _formula([(3, 2, 2, 2), (3, 1, 3, 0), (3, 2, 1, 1), (1, 1, 1, 0)], 41)
    w = _formula([(3, 2, 2, 2), (5, 2, 1, 0), (3, 2, 1, 1), (1, 1, 1, 0)], 37)
    for layer, (oh, rh, jh), (ow, rw, jw) in zip(result.layers, h, w):
        assert layer.output_shape[1:] == (oh, ow)
        assert layer.receptive_field == (rh, rw)
        assert layer.jump == (jh, jw)
    # by hand for the first layer: window 1 + (3-1)*2 = 5, stride 2, (41+4-4-1)//2+1 = 21
    assert result.layers[0].window == (5, 5) and result.layers[0].stride == (2, 2)
    assert result.layers[0].output_shape == (8, 21, 19)
    # the plan's FLOPs for the first conv: 2*(8*21*19)*(3*3*3) multiply-adds + bias
    assert result.layers[0].flops == 2 * (8 * 21 * 19) * (3 * 3 * 3) + 8 * 21 * 19


def test_receptive_field_of_any_program_comes_from_its_maps():
    # two taps, 3 apart, every second position: window 4, stride 2
    model = nn.Sequential(nn.Program("y[n,c,h] = x[n,c,2*h] + x[n,c,2*h+3]"),
                          nn.Conv1d(2, 2, 3, dilation=3))
    result = nn.summarize(model, (2, 20))
    assert result.layers[0].window == (4,) and result.layers[0].stride == (2,)
    assert result.layers[0].output_shape == (2, 9)         # 2*h + 3 <= 19: h < 9
    assert result.layers[0].receptive_field == (4,)
    assert result.layers[1].receptive_field == (4 + (7 - 1) * 2,)  # window 1 + 2*3 = 7
    assert result.layers[1].jump == (2,)


def test_residual_and_global_pooling():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())),
        nn.GlobalAvgPool())
    result = nn.summarize(model, (1, 10, 10))
    assert result.layers[1].receptive_field == (5, 5)  # 3 + (3-1)*1
    assert result.layers[1].params == 4 * 4 * 9 + 4
    assert result.layers[2].output_shape == (4,) and result.layers[2].receptive_field is None


@pytest.mark.parametrize("shape", [(28, 28), (2, 28, 28)])
def test_wrong_input_shape_is_reported(shape):
    with pytest.raises(nn.InputShapeError):
        classic_cnn().summary(shape)
