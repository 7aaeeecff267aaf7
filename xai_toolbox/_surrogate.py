"""Weighted linear surrogates: the regression behind LIME-style methods.

scikit-learn fits the model where it is installed (``Ridge``, ``Lasso``, ``LinearRegression``
with ``sample_weight``, or any estimator with that interface). It is not a dependency of the
toolbox: without it, ``"linear"`` and ``"ridge"`` are solved by NumPy's least squares with the
same objective, and ``"lasso"`` fails with a message that says what to install.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

import numpy as np

from .errors import ParameterError

#: Regressors named by a string: ordinary least squares, ridge (L2) and lasso (L1).
LINEAR_REGRESSORS = ("ridge", "lasso", "linear")


def linear_regressor(name: str, value: Any) -> Any:
    """Validate a surrogate regressor: a name in :data:`LINEAR_REGRESSORS`, or an unfitted
    estimator with ``fit(X, y, sample_weight=...)`` that sets ``coef_`` and ``intercept_``
    (scikit-learn's interface), which is copied before every fit.

    Example:
        >>> linear_regressor("regressor", "ridge")
        'ridge'
    """
    if isinstance(value, str):
        if value not in LINEAR_REGRESSORS:
            raise ParameterError(f"{name} must be one of {LINEAR_REGRESSORS} or an estimator, got {value!r}")
        return value
    if not callable(getattr(value, "fit", None)):
        raise ParameterError(
            f"{name} must be one of {LINEAR_REGRESSORS} or an estimator with fit(X, y, sample_weight) "
            f"setting coef_ and intercept_ (scikit-learn's interface), got {type(value).__name__}"
        )
    return value


def _sklearn_linear_model() -> Any:
    try:
        return importlib.import_module("sklearn.linear_model")
    except ImportError:
        return None


def fit_linear_surrogate(
    z: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, *, regressor: Any = "ridge", alpha: float = 1.0
) -> tuple[np.ndarray, float]:
    """``(coef (M,), intercept)`` of the weighted linear fit ``y ≈ intercept + z @ coef``.

    Minimises ``Σ_s w_s (y_s − b − z_s·β)² + penalty(β)`` with an unpenalised intercept ``b``:
    ``"linear"`` no penalty (least squares, minimum-norm solution where the design is
    rank-deficient), ``"ridge"`` ``alpha·‖β‖²``, ``"lasso"`` scikit-learn's
    ``Lasso(alpha)`` (its objective divides the squared loss by twice the sum of weights).
    The sample weights are not rescaled, as in scikit-learn, so ``alpha`` acts against
    their scale. Computed in float64.

    Example:
        >>> coef, intercept = fit_linear_surrogate(z, scores, kernel_weights, regressor="ridge", alpha=1.0)
    """
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    if not isinstance(regressor, str):
        model = copy.deepcopy(regressor)  # the user's estimator stays unfitted
        model.fit(z, y, sample_weight=w)
        return np.asarray(model.coef_, dtype=np.float64).reshape(-1), float(np.asarray(model.intercept_).reshape(-1)[0])
    linear_model = _sklearn_linear_model()
    if linear_model is not None:
        model = {
            "ridge": lambda: linear_model.Ridge(alpha=alpha),
            "lasso": lambda: linear_model.Lasso(alpha=alpha),
            "linear": lambda: linear_model.LinearRegression(),
        }[regressor]()
        model.fit(z, y, sample_weight=w)
        return np.asarray(model.coef_, dtype=np.float64).reshape(-1), float(model.intercept_)
    if regressor == "lasso":
        raise ParameterError(
            "regressor='lasso' needs scikit-learn, which is not installed: pip install scikit-learn "
            "(or use regressor='ridge' or 'linear', solved with NumPy)"
        )
    # Centre on the weighted means (the intercept is not penalised), then least squares on the
    # rows scaled by sqrt(w), with sqrt(alpha)·I appended for the ridge penalty.
    z_mean = np.average(z, axis=0, weights=w)
    y_mean = float(np.average(y, weights=w))
    root = np.sqrt(w)
    a, b = root[:, None] * (z - z_mean), root * (y - y_mean)
    if regressor == "ridge" and alpha > 0:
        a = np.vstack([a, np.sqrt(alpha) * np.eye(z.shape[1])])
        b = np.concatenate([b, np.zeros(z.shape[1])])
    coef = np.linalg.lstsq(a, b, rcond=None)[0]
    return coef, y_mean - float(z_mean @ coef)
