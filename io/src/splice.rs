//! Zero-copy forwarding with splice(2): socket → pipe → socket inside the
//! kernel, for connections the engine has handed over (`Action::Splice`).
//!
//! A direction holds a pipe only while bytes are stuck in it (its destination
//! is not writable): pipes come from a per-worker pool and go back as soon as
//! they are empty, so idle connections hold no pipe and no extra descriptors.
//! Pipes are enlarged (F_SETPIPE_SZ) so one call moves up to a megabyte.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The pipe size asked for; 1 MiB is the default unprivileged maximum (fs.pipe-max-size).
const PIPE_BYTES: i32 = 1 << 20;

pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes in the pipe (tracked here: a full pipe and an empty socket both say EAGAIN).
    pub len: usize,
    pub capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`, which we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; a failure leaves the default size.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
        let capacity = if size > 0 {
            size as usize
        } else {
            // SAFETY: as above.
            (unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) }).max(4096) as usize
        };
        Ok(Pipe { read, write, len: 0, capacity })
    }

    pub fn room(&self) -> usize {
        self.capacity - self.len
    }

    /// Moves up to `room()` bytes from socket `from` into the pipe. Ok(0) = EOF.
    pub fn fill_from(&mut self, from: RawFd) -> io::Result<usize> {
        let n = splice(from, self.write.as_raw_fd(), self.room())?;
        self.len += n;
        Ok(n)
    }

    /// Moves what the pipe holds into socket `to`, as much as it takes.
    pub fn drain_to(&mut self, to: RawFd) -> io::Result<usize> {
        let n = splice(self.read.as_raw_fd(), to, self.len)?;
        self.len -= n;
        Ok(n)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: plain descriptors and null offsets (sockets and pipes have no offsets).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Spare empty pipes, and a bound on how many exist at once.
pub struct PipePool {
    spare: Vec<Pipe>,
    outstanding: usize,
    outstanding_max: usize,
    spare_max: usize,
}

impl PipePool {
    pub fn new(outstanding_max: usize) -> PipePool {
        PipePool { spare: Vec::new(), outstanding: 0, outstanding_max, spare_max: 64 }
    }

    /// An empty pipe, or `None` when the bound is reached (the caller waits).
    pub fn take(&mut self) -> Option<Pipe> {
        if let Some(pipe) = self.spare.pop() {
            self.outstanding += 1;
            return Some(pipe);
        }
        if self.outstanding >= self.outstanding_max {
            return None;
        }
        match Pipe::new() {
            Ok(pipe) => {
                self.outstanding += 1;
                Some(pipe)
            }
            Err(e) => {
                log::warn!("cannot create a splice pipe: {e}");
                None
            }
        }
    }

    /// Takes a pipe back; one still holding bytes is closed (its bytes are lost
    /// with the connection that owned them).
    pub fn give_back(&mut self, pipe: Pipe) {
        self.outstanding -= 1;
        if pipe.len == 0 && self.spare.len() < self.spare_max {
            self.spare.push(pipe);
        }
    }
}

impl crate::worker::Worker {
    /// One splice round on a handed-over connection: per direction, drain its
    /// pipe into the destination, then refill it from the source. Returns
    /// whether anything moved. FINs are reported once the pipe is empty, so a
    /// FIN never overtakes bytes.
    pub(crate) fn pump_spliced_once(&mut self, slot: usize, id: strait_engine::ConnId) -> bool {
        use strait_engine::Side;
        let now = self.clock.now();
        let mut progress = false;
        for source in Side::BOTH {
            let destination = source.other();
            let Some(Some(conn)) = self.conns.get_mut(slot) else { return progress };
            let (Some(from), Some(to)) = (
                conn.sockets[source.index()].as_ref().map(AsRawFd::as_raw_fd),
                conn.sockets[destination.index()].as_ref().map(AsRawFd::as_raw_fd),
            ) else {
                continue;
            };
            let mut moved = 0;
            let mut failed = None;
            // Drain first: room in the pipe is what lets the source be read.
            if let Some(pipe) = conn.pipes[source.index()].as_mut().filter(|p| p.len > 0) {
                if conn.ready[destination.index()].writable {
                    match pipe.drain_to(to) {
                        Ok(n) => {
                            moved += n;
                            progress |= n > 0;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            conn.ready[destination.index()].writable = false
                        }
                        Err(_) => failed = Some(destination),
                    }
                }
            }
            if failed.is_none() && conn.ready[source.index()].readable && !conn.eof[source.index()] {
                if conn.pipes[source.index()].is_none() {
                    conn.pipes[source.index()] = self.pipes.take();
                }
                match conn.pipes[source.index()].as_mut() {
                    Some(pipe) if pipe.room() > 0 => match pipe.fill_from(from) {
                        Ok(0) => {
                            conn.eof[source.index()] = true;
                            conn.ready[source.index()].readable = false;
                            progress = true;
                        }
                        Ok(n) => {
                            progress = true;
                            // Pass it on at once when the destination takes it.
                            if conn.ready[destination.index()].writable {
                                match pipe.drain_to(to) {
                                    Ok(m) => moved += m,
                                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                        conn.ready[destination.index()].writable = false
                                    }
                                    Err(_) => failed = Some(destination),
                                }
                            }
                            let _ = n;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.ready[source.index()].readable = false,
                        Err(_) => failed = Some(source),
                    },
                    Some(_) => {}
                    // Every pipe of this worker is holding bytes: try again on the next turn.
                    None => {
                        let tag = conn.tags[Side::Client.index()];
                        self.again.push_back(crate::conn_io::conn_token(self.listeners.len(), id, Side::Client, tag))
                    }
                }
            }
            if conn.pipes[source.index()].as_ref().is_some_and(|p| p.len == 0) {
                let pipe = conn.pipes[source.index()].take().expect("checked above");
                self.pipes.give_back(pipe);
            }
            let fin_due =
                conn.eof[source.index()] && conn.pipes[source.index()].is_none() && !conn.fin_reported[source.index()];
            if fin_due {
                conn.fin_reported[source.index()] = true;
            }
            if moved > 0 {
                self.engine.handle_spliced(now, id, source, moved);
            }
            if let Some(side) = failed {
                self.engine.handle_reset(now, id, side);
                return true;
            }
            if fin_due {
                self.engine.handle_read(now, id, source, 0);
                progress = true;
            }
        }
        progress
    }
}
