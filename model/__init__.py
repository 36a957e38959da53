"""A small neural-network library in NumPy: layers, losses, optimizers, gradient checks, weights files,
and input attributions (explanations)."""

from model.attribution import Attribution, attribute
from model.gradcheck import GradCheckResult, gradient_check, input_gradient_check, numerical_gradient
from model.heads import loss_for_head
from model.io import LoadedModel, WeightsFileError, load_model, save_model
from model.layers import BatchNorm1d, Dense, Dropout, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from model.losses import MeanSquaredError, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy
from model.network import Sequential
from model.optimizers import SGD, Adam, Momentum

__all__ = [
    "Adam", "Attribution", "BatchNorm1d", "Dense", "Dropout", "GradCheckResult", "LeakyReLU", "LoadedModel",
    "MeanSquaredError", "Momentum", "ReLU", "SGD", "Sequential", "Sigmoid", "SigmoidBinaryCrossEntropy",
    "Softmax", "SoftmaxCrossEntropy", "Tanh", "WeightsFileError", "attribute", "gradient_check",
    "input_gradient_check", "load_model", "loss_for_head", "numerical_gradient", "save_model",
]
