//! Tests of the quantiles, the bootstrap and its pooled evaluation.

use super::*;

fn rounds(rng: &mut ChaCha8Rng, n: usize, per: usize, center: f64) -> Vec<Observation> {
    (0..n)
        .map(|_| {
            let s: Vec<f64> = (0..per)
                .map(|_| center * rng.gen_range(0.8..1.25))
                .collect();
            Observation::Dist(Dist::from_samples(&s))
        })
        .collect()
}

#[test]
fn quantiles_are_nearest_rank() {
    let d = Dist::from_samples(&[5.0, 1.0, 4.0, 2.0, 3.0]);
    assert_eq!(d.quantile(0.5), Some(3.0));
    assert_eq!(d.quantile(0.99), Some(5.0));
    assert_eq!(d.quantile(0.0), Some(1.0));
    assert_eq!(d.max(), Some(5.0));
    assert_eq!(Dist::default().quantile(0.5), None);
    let h = Dist {
        points: vec![(100.0, 98), (5000.0, 2)],
    };
    assert_eq!(h.quantile(0.5), Some(100.0));
    assert_eq!(h.quantile(0.99), Some(5000.0));
    assert_eq!(median(&[1.0, 3.0, 2.0, 10.0]), Some(2.5));
}

#[test]
fn a_real_difference_is_significant_and_none_is_not() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let slow = rounds(&mut rng, 8, 15, 4000.0);
    let fast = rounds(&mut rng, 8, 15, 500.0);
    let same = rounds(&mut rng, 8, 15, 500.0);
    let b = Bootstrap::new(1);
    let q = Statistic::Quantile(0.5);
    let c = b.compare(q, &slow, &fast, "x").unwrap();
    assert!(c.significant(), "{c:?}");
    let r = c.ratio.unwrap();
    assert!(r.low.unwrap() > 5.0 && r.high.unwrap() < 12.0, "{r:?}");
    assert!(r.low.unwrap() <= r.value && r.value <= r.high.unwrap());
    let c = b.compare(q, &same, &fast, "x").unwrap();
    assert!(!c.significant(), "{c:?}");
    assert!(c.ratio.unwrap().low.unwrap() < 1.0 && c.ratio.unwrap().high.unwrap() > 1.0);
    // Seeded: the same seed gives the same interval, another seed a (slightly) different one.
    assert_eq!(
        b.compare(q, &slow, &fast, "x"),
        b.compare(q, &slow, &fast, "x")
    );
    assert_ne!(
        b.compare(q, &slow, &fast, "x"),
        Bootstrap::new(2).compare(q, &slow, &fast, "x")
    );
}

#[test]
fn too_few_rounds_give_no_interval_and_no_verdict() {
    let one = vec![Observation::Scalar(10.0)];
    let other = vec![Observation::Scalar(20.0)];
    let b = Bootstrap::new(0);
    let c = b.compare(Statistic::Median, &one, &other, "y").unwrap();
    assert_eq!(c.difference.value, -10.0);
    assert!(c.difference.low.is_none() && !c.significant());
    let e = b.estimate(Statistic::Median, &one, "y").unwrap();
    assert_eq!((e.value, e.low), (10.0, None));
}

#[test]
fn constant_figures_differ_for_certain_and_sums_add_up() {
    let a = vec![Observation::Scalar(4096.0); 5];
    let b = vec![Observation::Scalar(1024.0); 5];
    let c = Bootstrap::new(0)
        .compare(Statistic::Median, &a, &b, "z")
        .unwrap();
    assert!(c.significant());
    assert_eq!(c.ratio.unwrap().low, Some(4.0));
    let leaks = [0.0, 0.0, 1.0].map(Observation::Scalar);
    assert_eq!(Statistic::Sum.eval(&leaks, &[0, 1, 2]), Some(1.0));
    // Rounds known only by their quantile: the median of the rounds' values.
    let mixed = vec![
        Observation::Point(10.0),
        Observation::Dist(Dist::from_samples(&[30.0, 30.0])),
        Observation::Point(20.0),
    ];
    let q = Statistic::Quantile(0.5);
    assert_eq!(q.eval(&mixed, &[0, 1, 2]), Some(20.0));
    assert!(!q.pools(&mixed));
}

/// The sort-based pooled quantile the counting one replaces.
fn sorted_quantile(obs: &[Observation], picks: &[usize], q: f64) -> Option<f64> {
    let mut points = Vec::new();
    for &i in picks {
        if let Observation::Dist(d) = &obs[i] {
            points.extend_from_slice(&d.points);
        }
    }
    quantile_of(points, q)
}

#[test]
fn pooled_quantiles_match_sorting_every_point() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Exact samples and histograms, with repeated values across rounds and empty buckets.
    let obs: Vec<Observation> = (0..12)
        .map(|r| {
            let points = (0..rng.gen_range(0..40))
                .map(|_| {
                    (
                        f64::from(rng.gen_range(1..60u32)) * 10.0,
                        rng.gen_range(0..4),
                    )
                })
                .collect();
            if r == 5 {
                Observation::Dist(Dist::default())
            } else {
                Observation::Dist(Dist { points })
            }
        })
        .collect();
    let prepared = Prepared::new(Statistic::Quantile(0.5), &obs);
    let mut picks = Vec::new();
    for _ in 0..500 {
        resample(&mut rng, obs.len(), &mut picks);
        for q in [0.0, 0.5, 0.99, 1.0] {
            let counted = Prepared::new(Statistic::Quantile(q), &obs).eval(&picks);
            assert_eq!(
                counted,
                sorted_quantile(&obs, &picks, q),
                "q {q}, picks {picks:?}"
            );
        }
        assert_eq!(prepared.eval(&picks), sorted_quantile(&obs, &picks, 0.5));
    }
}

#[test]
fn medians_of_odd_and_even_counts() {
    assert_eq!(median(&[3.0]), Some(3.0));
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    assert_eq!(median(&[5.0, 1.0, 4.0, 2.0, 3.0]), Some(3.0));
    assert_eq!(median(&[f64::NAN]), None);
}
