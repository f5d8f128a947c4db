"""tensorc.nn: layers written as tensorc programs, trained with derived adjoints.

    from tensorc import nn
    model = nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(16 * 12 * 12, 10))
    print(model)                       # every layer with its program
    loss_fn, opt = nn.CrossEntropyLoss(), nn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.fit(model, loss_fn, opt, x, labels, epochs=3, batch_size=64)

Each layer's forward is a compiled tensorc program (`layer.program`); its backward is
the adjoint program `tensorc.grad` derives from it (`layer.adjoint()`).
"""

from . import init
from .activations import (
    ELU,
    GELU,
    GLU,
    Elementwise,
    LeakyReLU,
    LogSoftmax,
    Maxout,
    Mish,
    PReLU,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Swish,
    Tanh,
)
from .data import accuracy, evaluate, fit, minibatches, train_step
from .init import manual_seed
from .layers import (
    AvgPool1d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    Conv1d,
    Conv2d,
    Conv3d,
    Dropout,
    Flatten,
    GlobalAvgPool,
    LayerNorm,
    Linear,
    MaxPool1d,
    MaxPool2d,
    Residual,
    RMSNorm,
)
from .losses import CrossEntropyLoss, Loss, MSELoss
from .module import InputShapeError, Module, Parameter, Sequential, StateDictError
from .optim import SGD, Adam, AdamW, Optimizer
from .program import Program, ProgramModule
from .summary import LayerSummary, ModelSummary, summarize

__all__ = [
    "init", "manual_seed", "Parameter", "Module", "Sequential", "ProgramModule", "Program",
    "InputShapeError", "StateDictError",
    "Linear", "Conv1d", "Conv2d", "Conv3d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
    "GlobalAvgPool", "Flatten", "Dropout", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "LayerNorm", "RMSNorm", "Residual",
    "Elementwise", "ReLU", "LeakyReLU", "PReLU", "ELU", "SiLU", "Swish", "GELU", "Mish",
    "Sigmoid", "Tanh", "Softplus", "Softmax", "LogSoftmax", "GLU", "Maxout",
    "Loss", "CrossEntropyLoss", "MSELoss",
    "Optimizer", "SGD", "Adam", "AdamW",
    "minibatches", "accuracy", "evaluate", "fit", "train_step",
    "summarize", "ModelSummary", "LayerSummary",
]
