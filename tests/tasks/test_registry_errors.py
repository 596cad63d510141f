"""A model URI that names nothing gives one line that says which URI and why."""

import pytest

from tracking.models import ModelNotFoundError, load_keras_model


def test_an_unloadable_model_uri_is_one_line_naming_it(mlflow_uri):
    uri = "runs:/0123456789abcdef0123456789abcdef/model"
    with pytest.raises(
        ModelNotFoundError, match=r"model 'runs:/0123.*/model' cannot be loaded: "
    ) as raised:
        load_keras_model(uri)
    assert "\n" not in str(raised.value)
