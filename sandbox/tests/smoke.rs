mod common;
use common::*;

#[test]
#[ignore = "needs root"]
fn true_runs_and_leaves_nothing() {
    assert_root();
    let fx = Fixture::new("smoke");
    let o = fx.sh("id -u; echo $HOME; cat /etc/resolv.conf; hostname; ls /; env | sort");
    eprintln!("{o:#?}");
    assert!(o.exit.success(), "{o:?}");
    assert_eq!(o.stdout.lines().next().unwrap(), fx.uid.to_string());
    fx.assert_no_mounts_except_netns();
}
