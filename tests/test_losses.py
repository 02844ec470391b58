"""Golden values of the loss terms on small hand-checked tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from repro import losses


def test_kd_loss_is_zero_for_identical_logits_and_matches_kl_formula():
    torch.manual_seed(0)
    logits = torch.randn(4, 10)
    assert losses.kd_loss(logits, logits, temperature=4.0).abs() < 1e-6
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    # p_teacher = (3/4, 1/4), p_student = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2); T = 1.
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert abs(losses.kd_loss(student, teacher, 1.0).item() - expected) < 1e-6
    # T^2 scaling: with T = 2 the same logits divided by 2 give T^2 * KL of the softened outputs.
    soft = F.kl_div(F.log_softmax(student / 2, 1), F.softmax(teacher / 2, 1), reduction="batchmean") * 4
    assert abs(losses.kd_loss(student, teacher, 2.0).item() - soft.item()) < 1e-6


def test_onehot_loss_is_cross_entropy_against_own_argmax():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    expected = -(math.log(math.exp(2) / (math.exp(2) + 2)) + math.log(math.exp(5) / (math.exp(5) + 2))) / 2
    assert abs(losses.onehot_loss(logits).item() - expected) < 1e-6


def test_information_entropy_is_minus_log_k_for_balanced_batch():
    # Two confident predictions on different classes: the batch mean is uniform over 2 of 2 classes.
    logits = torch.tensor([[30.0, -30.0], [-30.0, 30.0]])
    assert abs(losses.information_entropy_loss(logits).item() + math.log(2)) < 1e-6
    collapsed = torch.tensor([[30.0, -30.0], [30.0, -30.0]])
    assert losses.information_entropy_loss(collapsed).item() > -1e-6  # all one class: entropy ~ 0


def test_activation_loss_is_negative_mean_absolute_feature():
    features = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    assert losses.activation_loss(features).item() == -1.25


def test_jensen_shannon_is_symmetric_zero_on_equal_and_bounded_by_log2():
    torch.manual_seed(0)
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    assert losses.jensen_shannon_loss(a, a).abs() < 1e-6
    assert torch.isclose(losses.jensen_shannon_loss(a, b), losses.jensen_shannon_loss(b, a))
    far = losses.jensen_shannon_loss(torch.tensor([[100.0, -100.0]]), torch.tensor([[-100.0, 100.0]]), 1.0)
    assert abs(far.item() - math.log(2)) < 1e-5


def test_total_variation_of_a_step_image():
    image = torch.zeros(1, 1, 2, 2)
    image[..., :, 1] = 1.0  # one vertical edge: dx = [1, 1] over 2 positions, dy = 0
    assert losses.total_variation_loss(image).item() == 1.0


def test_bn_statistics_loss_sums_l2_distances_over_layers():
    value = losses.bn_statistics_loss([torch.tensor([3.0, 0.0])], [torch.tensor([1.0, 1.0])],
                                      [torch.tensor([0.0, 4.0])], [torch.tensor([1.0, 1.0])])
    assert value.item() == 5.0  # ||(3, -4)|| + ||0||


def test_divergences_keep_finite_gradients_for_a_saturated_teacher():
    """A confident teacher's softmax underflows to exact zeros; generator terms differentiate through
    the teacher's side, so a probability-space KL would give inf/NaN gradients (Fast on an untrained
    CIFAR-100 teacher did). Every divergence must give finite gradients on both sides."""
    import torch

    from repro.losses import jensen_shannon_loss, kd_loss
    from repro.methods.inversion import masked_adversarial

    teacher = torch.tensor([[900.0, 0.0, -900.0], [0.0, 800.0, 5.0]], requires_grad=True)
    student = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]], requires_grad=True)
    assert float(torch.softmax(teacher, 1).min()) == 0.0  # the hazard is real at these logits
    for loss in (kd_loss(student, teacher, 1.0), kd_loss(student, teacher, 20.0),
                 masked_adversarial(student, teacher), jensen_shannon_loss(student, teacher, 1.0)):
        teacher.grad = student.grad = None
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(teacher.grad).all() and torch.isfinite(student.grad).all()


def test_weighted_sum_golden_value_and_gradients_are_the_weights():
    terms = {"a": torch.tensor(2.0, requires_grad=True), "b": torch.tensor(-1.0, requires_grad=True),
             "c": torch.tensor(0.5, requires_grad=True)}
    total = losses.weighted_sum(terms, {"a": 0.25, "b": 1.0, "c": 4.0})
    assert total.item() == 1.5  # 0.25 * 2 - 1 + 4 * 0.5
    total.backward()
    assert [terms[name].grad.item() for name in "abc"] == [0.25, 1.0, 4.0]


def test_weighted_sum_is_bit_identical_to_the_inline_expression_in_the_order_of_the_weights():
    """Methods moved from ``w1 * a + w2 * b + ...`` to the helper without changing a bit of training:
    the sum runs left to right in the weights' order, whatever order the terms were logged in."""
    torch.manual_seed(0)
    a, b, c, d = (torch.randn(()) * 10.0 ** torch.randint(-6, 6, ()) for _ in range(4))
    weights = {"bn_statistics": 10.0, "onehot": 0.4, "adversarial": 1.1, "total_variation": 3e-5}
    logged = {"total_variation": d, "onehot": b, "bn_statistics": a, "adversarial": c}
    inline = 10.0 * a + 0.4 * b + 1.1 * c + 3e-5 * d
    assert torch.equal(losses.weighted_sum(logged, weights), inline)
    reordered = dict(reversed(list(weights.items())))
    assert torch.equal(losses.weighted_sum(logged, reordered), 3e-5 * d + 1.1 * c + 0.4 * b + 10.0 * a)


def test_weighted_sum_keeps_zero_weighted_terms_and_rejects_unmatched_names():
    term = torch.tensor(3.0, requires_grad=True)
    losses.weighted_sum({"kd": torch.tensor(1.0), "off": term}, {"kd": 1.0, "off": 0.0}).backward()
    assert term.grad is not None and term.grad.item() == 0.0  # switched off, still in the graph
    for terms, weights in (({"kd": term}, {}), ({"kd": term}, {"kd": 1.0, "ce": 1.0}), ({}, {})):
        with pytest.raises(KeyError, match="must name the same terms"):
            losses.weighted_sum(terms, weights)
