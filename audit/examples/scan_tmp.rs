use std::time::Instant;
use rusqlite::{Connection, OpenFlags};
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX).unwrap();
    for (name, ncols) in [("seq only", 1usize), ("all 9 cols get_ref", 9), ("seq only", 1), ("all 9", 9)] {
        let t = Instant::now();
        let mut stmt = conn.prepare("SELECT seq, time, profile, kind, decision, rule, details, prev_hash, hash FROM events ORDER BY seq").unwrap();
        let mut rows = stmt.query([]).unwrap();
        let mut acc = 0usize;
        let mut n = 0;
        while let Some(r) = rows.next().unwrap() {
            for i in 0..ncols { if let Ok(v) = r.get_ref(i) { acc += match v { rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => b.len(), _ => 1 }; } }
            n += 1;
        }
        println!("{name}: {n} rows {:.3}s acc {acc}", t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let mut stmt = conn.prepare("SELECT seq FROM events ORDER BY seq").unwrap();
    let mut rows = stmt.query([]).unwrap();
    let mut n=0; while let Some(_r) = rows.next().unwrap() { n+=1; }
    println!("select seq only: {n} {:.3}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut stmt = conn.prepare("SELECT details FROM events ORDER BY seq").unwrap();
    let mut rows = stmt.query([]).unwrap();
    let mut n=0; while let Some(r) = rows.next().unwrap() { n+= r.get_ref(0).unwrap().as_bytes().unwrap().len(); }
    println!("select details only: {n} {:.3}s", t.elapsed().as_secs_f64());
}
